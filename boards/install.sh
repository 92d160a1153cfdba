#!/bin/sh
# Installs harmonylite on a board: the binary, a config rendered for the board's profile, and
# the service for its init system. POSIX sh, so it runs on Raspberry Pi OS, Alpine and OpenWrt.
# Run with --help for the options; boards/README.md walks through an install on a Pi.
#
# What goes where (paths under --prefix when given):
#   /usr/bin/harmonylite                    the binary (replaced on every run)
#   /etc/harmonylite/harmonylite.toml       the config (never overwritten: a newer template
#                                           lands as harmonylite.toml.new)
#   the service files of the chosen init system, and the links that start it at boot
#   /usr/share/harmonylite/installed-files  what this script installed, for --uninstall
#   the database folder (/var/lib/harmonylite), created when missing and never removed
set -eu

NAME=harmonylite
HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST=/usr/share/$NAME/installed-files
CONFIG=/etc/$NAME/$NAME.toml
DEFAULT_DB_PATH=/var/lib/$NAME/app.db
# The gateway's local leaf nats-server (README: leaf-node topology).
DEFAULT_NATS_URL=nats://127.0.0.1:4222

usage() {
    cat <<EOF
usage: install.sh [options]            install or upgrade (safe to run again)
       install.sh --uninstall [--purge] [--prefix DIR]

  --profile NAME    board profile: $(profile_names)
                    (default: the one matching the binary's CPU)
  --init SYSTEM     systemd, sysv, openrc, procd or auto (default: auto, detected from the
                    running system, or from the files under --prefix)
  --bin PATH        the harmonylite binary for the board's CPU (default: ./harmonylite next to
                    this script, else target/release/harmonylite of the repository)
  --prefix DIR      install under DIR instead of / (an image's root file system, tests): no
                    user is created unless --create-user, nothing is started or stopped
  --db-path PATH    the application's database (default: $DEFAULT_DB_PATH)
  --nats-url URL    the NATS server to use (default: $DEFAULT_NATS_URL, a local leaf)
  --create-user     create the system user $NAME also under --prefix (useradd --prefix)
  --no-user         do not create the system user
  --no-enable       install the service without starting it at boot
  --print-config    print the config for --profile and exit
  --uninstall       remove what install.sh installed; keeps the database, the user and,
                    unless --purge, the config
  --purge           with --uninstall: remove the config and the log too
  -h, --help        show this help

Exit codes: 0 done, 1 failed (a command or a file operation), 2 bad usage (unknown option,
profile or init system, missing binary, binary for another CPU).
EOF
}

say() { echo "install.sh: $*"; }
fail() {
    echo "install.sh: error: $*" >&2
    exit 1
}
usage_error() {
    echo "install.sh: error: $*" >&2
    echo "install.sh: run install.sh --help for the options" >&2
    exit 2
}

profile_names() {
    for f in "$HERE"/profiles/*.env; do
        basename "$f" .env
    done | tr '\n' ' ' | sed 's/ $//'
}

# ---- arguments -------------------------------------------------------------------------------

action=install
prefix=""
profile=""
init=auto
bin=""
db_path=$DEFAULT_DB_PATH
nats_url=$DEFAULT_NATS_URL
create_user=auto
enable=yes
purge=no
while [ $# -gt 0 ]; do
    opt=$1
    shift
    case $opt in
        --*=*)
            set -- "${opt#*=}" "$@"
            opt=${opt%%=*}
            ;;
    esac
    case $opt in
        --profile | --init | --bin | --prefix | --db-path | --nats-url)
            [ $# -gt 0 ] || usage_error "$opt needs a value"
            val=$1
            shift
            case $opt in
                --profile) profile=$val ;;
                --init) init=$val ;;
                --bin) bin=$val ;;
                --prefix) prefix=$val ;;
                --db-path) db_path=$val ;;
                --nats-url) nats_url=$val ;;
            esac
            ;;
        --create-user) create_user=yes ;;
        --no-user) create_user=no ;;
        --no-enable) enable=no ;;
        --print-config) action=print-config ;;
        --uninstall) action=uninstall ;;
        --purge) purge=yes ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown option $opt" ;;
    esac
done
[ "$purge" = no ] || [ "$action" = uninstall ] || usage_error "--purge goes with --uninstall"

# The target root: empty for the running system. Every path below is written "$root/etc/...".
root=""
if [ -n "$prefix" ]; then
    [ -d "$prefix" ] || usage_error "--prefix $prefix: no such directory (create it first)"
    root=$(cd "$prefix" && pwd)
    [ "$root" != / ] || root=""
fi
if [ -z "$root" ] && [ "$action" != print-config ] && [ "$(id -u)" != 0 ]; then
    fail "installing into / needs root: run with sudo, or pass --prefix DIR"
fi

# ---- profile, binary, init system ------------------------------------------------------------

# The CPU an ELF binary is built for, from e_machine (offset 18; our targets are little-endian).
elf_arch() {
    magic=$(od -An -tx1 -N4 "$1" 2>/dev/null | tr -d ' \n')
    [ "$magic" = 7f454c46 ] || {
        echo "not-elf"
        return
    }
    case $(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n') in
        3e00) echo x86_64 ;;
        b700) echo aarch64 ;;
        2800) echo arm ;;
        *) echo "unknown" ;;
    esac
}

host_arch() {
    case $(uname -m) in
        x86_64 | amd64) echo x86_64 ;;
        aarch64 | arm64) echo aarch64 ;;
        arm*) echo arm ;;
        *) uname -m ;;
    esac
}

find_bin() {
    if [ -n "$bin" ]; then
        [ -f "$bin" ] || usage_error "--bin $bin: no such file"
    elif [ -f "$HERE/$NAME" ]; then
        bin=$HERE/$NAME
    elif [ -f "$HERE/../target/release/$NAME" ]; then
        bin=$HERE/../target/release/$NAME
    else
        usage_error "no binary found: pass --bin PATH (a build for the board's CPU)"
    fi
    bin_arch=$(elf_arch "$bin")
    case $bin_arch in
        not-elf) usage_error "--bin $bin is not an ELF executable" ;;
        unknown) usage_error "--bin $bin is built for a CPU no profile covers" ;;
    esac
}

# Reads the profile's key=value lines (not sourced: a profile is data, not code).
load_profile() {
    if [ -z "$profile" ]; then
        for f in "$HERE"/profiles/*.env; do
            if grep -qx "arch=$bin_arch" "$f"; then
                profile=$(basename "$f" .env)
                say "profile $profile (matches the binary's CPU, $bin_arch; --profile to choose)"
                break
            fi
        done
    fi
    profile_file=$HERE/profiles/$profile.env
    case $profile in
        '' | *[!a-z0-9_-]*) usage_error "--profile: expected one of: $(profile_names)" ;;
    esac
    [ -f "$profile_file" ] || usage_error "--profile $profile: unknown; expected one of: $(profile_names)"
    description="" p_arch="" polling_interval="" outbox_budget_bytes="" max_frame_bytes=""
    while IFS='=' read -r key value; do
        case $key in
            description) description=$value ;;
            arch) p_arch=$value ;;
            polling_interval) polling_interval=$value ;;
            outbox_budget_bytes) outbox_budget_bytes=$value ;;
            max_frame_bytes) max_frame_bytes=$value ;;
        esac
    done <"$profile_file"
    for v in "$polling_interval" "$outbox_budget_bytes" "$max_frame_bytes"; do
        case $v in '' | *[!0-9]*) fail "$profile_file: a number is missing or malformed" ;; esac
    done
    if [ -n "$bin_arch" ] && [ "$bin_arch" != "$p_arch" ]; then
        usage_error "--bin $bin is built for $bin_arch, profile $profile runs $p_arch: pass the $p_arch build, or the profile for $bin_arch"
    fi
}

check_values() {
    case $db_path in
        /*) ;;
        *) usage_error "--db-path $db_path: expected an absolute path" ;;
    esac
    case $db_path$nats_url in
        *[\"\\\|\&]* | *"
"*) usage_error "--db-path and --nats-url must not contain quotes, backslashes, | or &" ;;
    esac
    case $nats_url in
        nats://?* | tls://?* | ws://?* | wss://?*) ;;
        *) usage_error "--nats-url $nats_url: expected nats://host:port (or tls://, ws://, wss://)" ;;
    esac
}

render_config() {
    echo "# HarmonyLite sidecar configuration, board profile $profile: $description."
    echo "# Written by boards/install.sh, which never overwrites it (a newer template lands next to"
    echo "# it as harmonylite.toml.new). Why this profile's values:"
    sed -n 's/^#/#  /p' "$profile_file"
    echo
    sed -e "s|@POLLING_INTERVAL@|$polling_interval|" \
        -e "s|@OUTBOX_BUDGET_BYTES@|$outbox_budget_bytes|" \
        -e "s|@MAX_FRAME_BYTES@|$max_frame_bytes|" \
        -e "s|@DB_PATH@|$db_path|" \
        -e "s|@NATS_URL@|$nats_url|" \
        "$HERE/$NAME.toml.in"
}

detect_init() {
    if [ -z "$root" ]; then
        if [ -d /run/systemd/system ]; then
            echo systemd
            return
        fi
    elif [ -x "$root/lib/systemd/systemd" ] || [ -x "$root/usr/lib/systemd/systemd" ]; then
        echo systemd
        return
    fi
    if [ -f "$root/etc/openwrt_release" ] || [ -x "$root/sbin/procd" ]; then
        echo procd
    elif [ -x "$root/sbin/openrc-run" ] || [ -x "$root/sbin/openrc" ]; then
        echo openrc
    elif [ -d "$root/etc/init.d" ]; then
        echo sysv
    else
        usage_error "cannot tell the init system of ${root:-this system}: pass --init systemd|sysv|openrc|procd"
    fi
}

# ---- file operations, recorded for --uninstall -----------------------------------------------

record() {
    echo "$1 $2" >>"$new_manifest"
}

# Creates the missing folders of $1 (a target path), recording each one it made.
ensure_dir() {
    path=""
    old_ifs=$IFS
    IFS=/
    set -f
    for part in ${1#/}; do
        path="$path/$part"
        if [ ! -d "$root$path" ]; then
            mkdir "$root$path" || fail "cannot create $root$path"
            record d "$path"
        fi
    done
    set +f
    IFS=$old_ifs
}

# Installs file $1 as target path $2 with mode $3: atomically (a running binary is replaced,
# not overwritten) and only when the content changed.
put_file() {
    ensure_dir "$(dirname "$2")"
    record f "$2"
    if [ -f "$root$2" ] && cmp -s "$1" "$root$2"; then
        chmod "$3" "$root$2"
        say "unchanged $2"
        return
    fi
    verb=installed
    [ -e "$root$2" ] && verb=updated
    if ! { cp "$1" "$root$2.tmp.$$" && chmod "$3" "$root$2.tmp.$$" && mv -f "$root$2.tmp.$$" "$root$2"; }; then
        rm -f "$root$2.tmp.$$"
        fail "cannot write $root$2"
    fi
    say "$verb $2"
}

# A symlink $1 -> $2 (the target as the booted system sees it).
put_link() {
    ensure_dir "$(dirname "$1")"
    record l "$1"
    if [ -L "$root$1" ] && [ "$(readlink "$root$1")" = "$2" ]; then
        return
    fi
    ln -sfn "$2" "$root$1" || fail "cannot link $root$1"
    say "linked $1 -> $2"
}

# The numeric id of $NAME in the target's passwd or group file, if it has one.
target_id() {
    [ -r "$root/etc/$1" ] || return 1
    awk -F: -v n="$NAME" '$1 == n { print $3; found = 1 } END { exit !found }' "$root/etc/$1"
}

create_system_user() {
    if target_id passwd >/dev/null; then
        say "user $NAME exists"
        return
    fi
    if [ -n "$root" ]; then
        useradd --prefix "$root" --system --user-group --home-dir "/var/lib/$NAME" \
            --no-create-home --shell /usr/sbin/nologin "$NAME" ||
            fail "useradd --prefix $root failed (needs shadow 4.9 or newer): create the user in the image instead"
    elif command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "/var/lib/$NAME" --no-create-home \
            --shell /usr/sbin/nologin "$NAME" || fail "useradd $NAME failed"
    elif command -v adduser >/dev/null 2>&1; then
        # busybox (Alpine): a system group, then a system user without a home or a password.
        addgroup -S "$NAME" || fail "addgroup $NAME failed"
        adduser -S -D -H -h "/var/lib/$NAME" -s /sbin/nologin -G "$NAME" "$NAME" ||
            fail "adduser $NAME failed"
    else
        fail "neither useradd nor adduser found: create the user $NAME, or pass --no-user"
    fi
    say "created the system user $NAME"
}

# ---- install -----------------------------------------------------------------------------------

install_service() {
    case $init in
        systemd)
            sed "s|@DB_DIR@|$db_dir|" "$HERE/init/$NAME.service" >"$work/unit"
            put_file "$work/unit" "/etc/systemd/system/$NAME.service" 0644
            # The user and the folders also appear at boot, for images built with --prefix.
            printf 'u %s - "HarmonyLite sidecar" /var/lib/%s\n' "$NAME" "$NAME" >"$work/sysusers"
            put_file "$work/sysusers" "/etc/sysusers.d/$NAME.conf" 0644
            put_file "$HERE/init/$NAME.tmpfiles" "/etc/tmpfiles.d/$NAME.conf" 0644
            [ "$enable" = no ] ||
                put_link "/etc/systemd/system/multi-user.target.wants/$NAME.service" "/etc/systemd/system/$NAME.service"
            ;;
        sysv)
            put_file "$HERE/init/$NAME.sysv" "/etc/init.d/$NAME" 0755
            if [ "$enable" = yes ]; then
                if [ -z "$root" ] && command -v update-rc.d >/dev/null 2>&1; then
                    # Debian's insserv orders scripts by their LSB headers: let it place the links.
                    update-rc.d "$NAME" defaults >/dev/null || fail "update-rc.d $NAME defaults failed"
                    say "enabled with update-rc.d"
                else
                    for l in 2 3 4 5; do put_link "/etc/rc$l.d/S20$NAME" "../init.d/$NAME"; done
                    for l in 0 1 6; do put_link "/etc/rc$l.d/K80$NAME" "../init.d/$NAME"; done
                fi
            fi
            ;;
        openrc)
            put_file "$HERE/init/$NAME.openrc" "/etc/init.d/$NAME" 0755
            [ "$enable" = no ] || put_link "/etc/runlevels/default/$NAME" "/etc/init.d/$NAME"
            ;;
        procd)
            put_file "$HERE/init/$NAME.procd" "/etc/init.d/$NAME" 0755
            if [ "$enable" = yes ]; then
                put_link "/etc/rc.d/S95$NAME" "../init.d/$NAME"
                put_link "/etc/rc.d/K10$NAME" "../init.d/$NAME"
            fi
            ;;
    esac
    # SysV and OpenRC write a log file; rotate it where logrotate is installed.
    case $init in
        sysv | openrc)
            if [ -d "$root/etc/logrotate.d" ]; then
                put_file "$HERE/init/$NAME.logrotate" "/etc/logrotate.d/$NAME" 0644
            fi
            ;;
    esac
}

install_config() {
    render_config >"$work/config"
    # The binary checks every key: a template mistake stops here, not at boot.
    if [ "$bin_arch" = "$(host_arch)" ]; then
        rc=0
        err=$("$bin" status --config "$work/config" 2>&1 >/dev/null) || rc=$?
        [ "$rc" -ne 2 ] || fail "the rendered config is invalid: $err"
    fi
    ensure_dir "$(dirname "$CONFIG")"
    if [ ! -e "$root$CONFIG" ]; then
        record c "$CONFIG"
        cp "$work/config" "$root$CONFIG" || fail "cannot write $root$CONFIG"
        say "installed $CONFIG (profile $profile)"
    elif cmp -s "$work/config" "$root$CONFIG"; then
        say "unchanged $CONFIG"
        return
    else
        record f "$CONFIG.new"
        cp "$work/config" "$root$CONFIG.new" || fail "cannot write $root$CONFIG.new"
        say "kept $CONFIG as it is (it differs from the template); the template for profile" \
            "$profile is in $CONFIG.new: compare them (diff) and merge by hand"
    fi
    # Readable by the service only: it may hold a NATS password. procd runs the node as root.
    # Without the group yet (an image), systemd-tmpfiles gives the file to it at first boot.
    for f in "$root$CONFIG" "$root$CONFIG.new"; do
        [ -e "$f" ] || continue
        if [ "$init" = procd ]; then
            chmod 0600 "$f"
        else
            chmod 0640 "$f"
            if gid=$(target_id group); then
                chgrp "$gid" "$f"
            elif [ "$init" != systemd ]; then
                say "note: no group $NAME yet: chgrp $NAME ${f#"$root"} once the user exists"
            fi
        fi
    done
}

# The database folder: created (setgid, group-writable) when missing, left alone when it exists
# (it may be the application's own folder). Never recorded, so never removed.
prepare_db_dir() {
    if [ -d "$root$db_dir" ]; then
        say "kept $db_dir as it is (user $NAME needs write access: database, -wal, -shm)"
        return
    fi
    mkdir -p "$root$db_dir" || fail "cannot create $root$db_dir"
    chmod 2770 "$root$db_dir"
    if uid=$(target_id passwd) && gid=$(target_id group); then
        chown "$uid:$gid" "$root$db_dir"
    fi
    say "created $db_dir (mode 2770): put the application's user in group $NAME"
}

do_install() {
    find_bin
    load_profile
    check_values
    [ "$init" != auto ] || init=$(detect_init)
    case $init in
        systemd | sysv | openrc | procd) ;;
        *) usage_error "--init $init: expected systemd, sysv, openrc, procd or auto" ;;
    esac
    db_dir=$(dirname "$db_path")
    if [ "$create_user" = auto ]; then
        # OpenWrt services run as root; under --prefix, useradd would edit the image.
        create_user=yes
        if [ -n "$root" ] || [ "$init" = procd ]; then create_user=no; fi
    fi
    say "installing into ${root:-/} (profile $profile, init $init, binary $bin)"
    if [ "$init" = procd ] && [ "${db_path#/var/}" != "$db_path" ]; then
        say "warning: OpenWrt keeps /var in RAM: $db_path is lost at reboot; pass --db-path on persistent storage"
    fi

    [ "$create_user" = no ] || create_system_user
    put_file "$bin" "/usr/bin/$NAME" 0755
    install_config
    install_service
    prepare_db_dir
    record i "$init"

    # Merge with what earlier runs installed, so --uninstall removes both.
    ensure_dir "$(dirname "$MANIFEST")"
    if [ -f "$root$MANIFEST" ]; then cat "$root$MANIFEST" >>"$new_manifest"; fi
    sort -u "$new_manifest" >"$work/merged"
    put_file "$work/merged" "$MANIFEST" 0644 >/dev/null

    if [ -z "$root" ]; then
        case $init in
            systemd)
                systemctl daemon-reload || true
                next="systemctl start $NAME; journalctl -u $NAME -f"
                ;;
            procd) next="/etc/init.d/$NAME start; logread -f -e $NAME" ;;
            openrc) next="rc-service $NAME start" ;;
            *) next="/etc/init.d/$NAME start" ;;
        esac
        say "done. Start it now with: $next"
    elif [ "$enable" = yes ]; then
        say "done (${root}): the service starts at the board's next boot"
    else
        say "done (${root}): installed, not enabled (--no-enable)"
    fi
}

# ---- uninstall ---------------------------------------------------------------------------------

do_uninstall() {
    installed_init=""
    if [ -f "$root$MANIFEST" ]; then
        installed_init=$(awk '$1 == "i" { print $2; exit }' "$root$MANIFEST")
    fi
    if [ -z "$root" ]; then
        # Stop the running node first (it flushes its outbox on SIGTERM).
        case $installed_init in
            systemd)
                if [ -d /run/systemd/system ]; then
                    systemctl disable --now "$NAME" >/dev/null 2>&1 || true
                fi
                ;;
            sysv | openrc | procd)
                if [ -x "/etc/init.d/$NAME" ]; then "/etc/init.d/$NAME" stop || true; fi
                if [ "$installed_init" = sysv ] && command -v update-rc.d >/dev/null 2>&1; then
                    update-rc.d -f "$NAME" remove >/dev/null 2>&1 || true
                fi
                ;;
        esac
    fi
    if [ -f "$root$MANIFEST" ]; then
        # Files and links first, then the folders this script created, deepest first, and only
        # when they are empty.
        awk '$1 == "f" || $1 == "l" { print $2 }' "$root$MANIFEST" | while read -r p; do
            [ "$p" != "$MANIFEST" ] || continue
            if [ -e "$root$p" ] || [ -L "$root$p" ]; then
                rm -f "$root$p" && say "removed $p"
            fi
        done
        rm -f "$root$MANIFEST"
    else
        say "no record of an install ($MANIFEST): no service files to remove"
    fi
    if [ "$purge" = yes ]; then
        for f in "$root$CONFIG" "$root$CONFIG.new" "$root/var/log/$NAME.log" "$root/var/log/$NAME.log".*; do
            if [ -e "$f" ]; then rm -f "$f" && say "removed ${f#"$root"}"; fi
        done
        rmdir "$root/etc/$NAME" 2>/dev/null || true
    elif [ -e "$root$CONFIG" ]; then
        say "kept $CONFIG (--purge removes it)"
    fi
    if [ -f "$work/manifest.old" ]; then
        awk '$1 == "d" { print $2 }' "$work/manifest.old" | sort -r | while read -r p; do
            rmdir "$root$p" 2>/dev/null || true
        done
    fi
    # The SysV script's pid folder, when it is empty (on a running system /run is a tmpfs).
    rmdir "$root/var/run/$NAME" 2>/dev/null || true
    say "kept the database folder and the user $NAME"
}

# ---- main --------------------------------------------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/$NAME-install.XXXXXX") || fail "cannot create a temp folder"
trap 'rm -rf "$work"' EXIT
new_manifest=$work/manifest
: >"$new_manifest"

case $action in
    print-config)
        bin_arch=""
        [ -n "$profile" ] || usage_error "--print-config needs --profile NAME"
        load_profile
        check_values
        render_config
        ;;
    install) do_install ;;
    uninstall)
        if [ -f "$root$MANIFEST" ]; then cp "$root$MANIFEST" "$work/manifest.old"; fi
        do_uninstall
        ;;
esac
