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
# and with --with-leaf HUB_URL, the gateway's leaf nats-server:
#   /etc/harmonylite/leaf.conf              its config (never overwritten, like the node's)
#   /etc/harmonylite/leaf.creds             the uplink's credentials (--leaf-creds), mode 0640
#   the harmonylite-leaf service of the chosen init system
set -eu

NAME=harmonylite
HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST=/usr/share/$NAME/installed-files
CONFIG=/etc/$NAME/$NAME.toml
DEFAULT_DB_PATH=/var/lib/$NAME/app.db
# The gateway's local leaf nats-server (README: leaf-node topology).
DEFAULT_NATS_URL=nats://127.0.0.1:4222
LEAF_CONF=/etc/$NAME/leaf.conf
LEAF_CREDS=/etc/$NAME/leaf.creds

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
  --db-group GROUP  group of a database folder this script creates (default: the group of
                    the nearest existing parent folder when that is not root's, else $NAME):
                    the application's group, so that it and the node can both write there
  --with-leaf URL   also install the gateway's leaf nats-server, listening on the host and
                    port of --nats-url (loopback only) with an uplink to the hub's leafnodes
                    listener URL (nats-leaf://hub.example:7422 or tls://...)
  --leaf-creds FILE the hub's credentials for the uplink (copied to $LEAF_CREDS)
  --leaf-bin PATH   the nats-server for the board, the binary or nats-server's release
                    tarball (nats-server-vX.Y.Z-linux-arm64.tar.gz); copied to
                    /usr/bin/nats-server (default: a nats-server already in /usr/bin,
                    /usr/sbin or /usr/local/bin)
  --leaf-domain D   the hub's JetStream domain (default: hub)
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
db_group=""
leaf_url=""
leaf_creds=""
leaf_bin=""
leaf_domain=hub
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
        --profile | --init | --bin | --prefix | --db-path | --nats-url | --db-group | --with-leaf | \
            --leaf-creds | --leaf-bin | --leaf-domain)
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
                --db-group) db_group=$val ;;
                --with-leaf) leaf_url=$val ;;
                --leaf-creds) leaf_creds=$val ;;
                --leaf-bin) leaf_bin=$val ;;
                --leaf-domain) leaf_domain=$val ;;
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
        2800)
            # ARMv6 or ARMv7: the binary names its target (harmonylite --version prints it).
            if tr -c 'a-z0-9-' '\n' <"$1" | grep -qx arm-unknown-linux-musleabihf; then
                echo armv6
            else
                echo arm
            fi
            ;;
        *) echo "unknown" ;;
    esac
}

host_arch() {
    case $(uname -m) in
        x86_64 | amd64) echo x86_64 ;;
        aarch64 | arm64) echo aarch64 ;;
        armv6*) echo armv6 ;;
        arm*) echo arm ;;
        *) uname -m ;;
    esac
}

find_bin() {
    if [ -n "$bin" ]; then
        [ -f "$bin" ] || usage_error "--bin $bin: no such file"
    elif [ -f "$HERE/$NAME" ]; then
        bin=$HERE/$NAME
    elif [ -f "$HERE/../$NAME" ] && [ ! -d "$HERE/../src" ]; then
        # The release tarball: harmonylite-<version>-<target>/{harmonylite,boards/}
        bin=$HERE/../$NAME
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
    # An ARMv6 build also runs on ARMv7 boards (their profile is then fine).
    if [ -n "$bin_arch" ] && [ "$bin_arch" != "$p_arch" ] && [ "$bin_arch:$p_arch" != armv6:arm ]; then
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
    case $db_group in
        *[!a-zA-Z0-9_.-]*) usage_error "--db-group $db_group: expected a group name" ;;
    esac
    if [ -z "$leaf_url" ]; then
        [ -z "$leaf_creds$leaf_bin" ] || usage_error "--leaf-creds and --leaf-bin go with --with-leaf HUB_URL"
        return
    fi
    case $leaf_url in
        *[\"\\\|\&\ ]* | *"
"*) usage_error "--with-leaf $leaf_url: must not contain quotes, backslashes, spaces, | or &" ;;
        nats-leaf://?* | tls://?* | ws://?* | wss://?* | nats://?*) ;;
        *) usage_error "--with-leaf $leaf_url: expected the hub's leafnodes listener, nats-leaf://hub.example:7422 (or tls://, ws://, wss://)" ;;
    esac
    # The leaf listens where the node connects: the host and port of --nats-url, on loopback.
    leaf_listen=${nats_url#nats://}
    case $nats_url in
        nats://127.0.0.1:[0-9]* | nats://localhost:[0-9]*) ;;
        *) usage_error "--with-leaf: --nats-url $nats_url must be nats://127.0.0.1:PORT (the leaf listens on loopback only)" ;;
    esac
    leaf_listen=${leaf_listen%/}
    case $leaf_domain in
        '' | *[!a-zA-Z0-9_-]*) usage_error "--leaf-domain $leaf_domain: expected a JetStream domain name (letters, digits, - and _)" ;;
    esac
    if [ -n "$leaf_creds" ]; then
        [ -f "$leaf_creds" ] || usage_error "--leaf-creds $leaf_creds: no such file"
        grep -q "BEGIN NATS USER JWT" "$leaf_creds" ||
            usage_error "--leaf-creds $leaf_creds: not a NATS credentials file (no \"BEGIN NATS USER JWT\"; nsc generate creds makes one)"
    fi
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
    changed=yes
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
            # systemd hides /home, /root and /run/user from a service with ProtectHome=yes: a
            # database there needs read-only (ReadWritePaths then opens its folder again).
            protect_home=yes
            case $db_dir/ in
                /home/* | /root/* | /run/user/*) protect_home=read-only ;;
            esac
            sed -e "s|@DB_DIR@|$db_dir|" -e "s|@PROTECT_HOME@|$protect_home|" "$HERE/init/$NAME.service" >"$work/unit"
            put_file "$work/unit" "/etc/systemd/system/$NAME.service" 0644
            # The user and the folders also appear at boot, for images built with --prefix.
            printf 'u %s - "HarmonyLite sidecar" /var/lib/%s\n' "$NAME" "$NAME" >"$work/sysusers"
            put_file "$work/sysusers" "/etc/sysusers.d/$NAME.conf" 0644
            # The database folder's line only when this run creates the folder: an existing one
            # is the application's, and tmpfiles would reset its owner at every boot.
            if [ "$db_dir_exists" = yes ]; then
                sed '/@DB_DIR@/d' "$HERE/init/$NAME.tmpfiles" >"$work/tmpfiles"
            else
                sed -e "s|@DB_DIR@|$db_dir|" -e "s|@DB_GROUP@|$group|" "$HERE/init/$NAME.tmpfiles" >"$work/tmpfiles"
            fi
            put_file "$work/tmpfiles" "/etc/tmpfiles.d/$NAME.conf" 0644
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
    # SysV and OpenRC write a log file; rotate it where logrotate is installed. Without
    # logrotate, the init scripts cap it at each start, and where busybox crond runs
    # /etc/periodic (Alpine) the same cap runs hourly.
    case $init in
        sysv | openrc)
            if [ -d "$root/etc/logrotate.d" ]; then
                put_file "$HERE/init/$NAME.logrotate" "/etc/logrotate.d/$NAME" 0644
            elif [ -d "$root/etc/periodic" ]; then
                put_file "$HERE/init/$NAME.logcap" "/etc/periodic/hourly/$NAME-logcap" 0755
            else
                say "note: no logrotate and no /etc/periodic: /var/log/$NAME.log is capped at 1 MiB at each start only"
            fi
            ;;
    esac
}

# The leaf nats-server: where its binary is on the board (installed from --leaf-bin, or one
# already there), its config, credentials and service.
# Sets leaf_path, the nats-server the leaf service runs (checked before anything is written).
find_leaf_bin() {
    if [ -n "$leaf_bin" ]; then
        [ -f "$leaf_bin" ] || usage_error "--leaf-bin $leaf_bin: no such file"
        case $leaf_bin in
            *.tar.gz | *.tgz)
                # nats-server's release tarball: nats-server-vX.Y.Z-linux-<arch>/nats-server
                mkdir -p "$work/leaf-tar"
                tar -xzf "$leaf_bin" -C "$work/leaf-tar" || usage_error "--leaf-bin $leaf_bin: not a readable .tar.gz"
                found=$(find "$work/leaf-tar" -type f -name nats-server | head -n 1)
                [ -n "$found" ] || usage_error "--leaf-bin $leaf_bin: no nats-server inside"
                leaf_bin=$found
                ;;
        esac
        case $(elf_arch "$leaf_bin"):$bin_arch in
            not-elf:*) usage_error "--leaf-bin $leaf_bin is not an ELF executable (the nats-server binary from the release tarball)" ;;
            "$bin_arch:$bin_arch" | arm:armv6) ;;
            *) usage_error "--leaf-bin $leaf_bin is built for $(elf_arch "$leaf_bin"), the node for $bin_arch: take the nats-server build for the same CPU" ;;
        esac
        leaf_path=/usr/bin/nats-server
        return
    fi
    leaf_path=""
    for c in /usr/bin/nats-server /usr/sbin/nats-server /usr/local/bin/nats-server; do
        if [ -x "$root$c" ]; then
            leaf_path=$c
            return
        fi
    done
    usage_error "--with-leaf: no nats-server in ${root:-}/usr/bin, /usr/sbin or /usr/local/bin: pass --leaf-bin PATH (the board's build from https://github.com/nats-io/nats-server/releases, see boards/README.md)"
}

install_leaf() {
    [ -z "$leaf_bin" ] || put_file "$leaf_bin" /usr/bin/nats-server 0755
    creds_line="# credentials: \"$LEAF_CREDS\""
    if [ -n "$leaf_creds" ]; then
        put_file "$leaf_creds" "$LEAF_CREDS" 0640
        if gid=$(target_id group); then chgrp "$gid" "$root$LEAF_CREDS"; fi
        creds_line="credentials: \"$LEAF_CREDS\""
    fi
    sed -e "s|@LEAF_CONF@|$LEAF_CONF|" -e "s|@LEAF_LISTEN@|$leaf_listen|" -e "s|@LEAF_DOMAIN@|$leaf_domain|g" \
        -e "s|@HUB_URL@|$leaf_url|" -e "s|@LEAF_CREDS_LINE@|$creds_line|" "$HERE/leaf.conf.in" >"$work/leaf.conf"
    if [ -x "$leaf_bin" ] && [ "$(elf_arch "$leaf_bin")" = "$(host_arch)" ]; then
        "$leaf_bin" -c "$work/leaf.conf" -t >/dev/null 2>&1 ||
            fail "the rendered leaf config is invalid: $("$leaf_bin" -c "$work/leaf.conf" -t 2>&1)"
    fi
    keep_or_put_config "$work/leaf.conf" "$LEAF_CONF" "the leaf template"
    case $init in
        systemd)
            sed "s|@LEAF_BIN@|$leaf_path|" "$HERE/init/$NAME-leaf.service" >"$work/leaf.unit"
            put_file "$work/leaf.unit" "/etc/systemd/system/$NAME-leaf.service" 0644
            [ "$enable" = no ] ||
                put_link "/etc/systemd/system/multi-user.target.wants/$NAME-leaf.service" "/etc/systemd/system/$NAME-leaf.service"
            ;;
        sysv | openrc | procd)
            sed "s|@LEAF_BIN@|$leaf_path|" "$HERE/init/$NAME-leaf.$init" >"$work/leaf.init"
            put_file "$work/leaf.init" "/etc/init.d/$NAME-leaf" 0755
            if [ "$enable" = yes ]; then
                case $init in
                    sysv)
                        if [ -z "$root" ] && command -v update-rc.d >/dev/null 2>&1; then
                            update-rc.d "$NAME-leaf" defaults >/dev/null || fail "update-rc.d $NAME-leaf defaults failed"
                        else
                            for l in 2 3 4 5; do put_link "/etc/rc$l.d/S19$NAME-leaf" "../init.d/$NAME-leaf"; done
                            for l in 0 1 6; do put_link "/etc/rc$l.d/K81$NAME-leaf" "../init.d/$NAME-leaf"; done
                        fi
                        ;;
                    openrc) put_link "/etc/runlevels/default/$NAME-leaf" "/etc/init.d/$NAME-leaf" ;;
                    procd)
                        put_link "/etc/rc.d/S90$NAME-leaf" "../init.d/$NAME-leaf"
                        put_link "/etc/rc.d/K15$NAME-leaf" "../init.d/$NAME-leaf"
                        ;;
                esac
            fi
            ;;
    esac
}

# Installs config $1 as $2 unless one is there: then it stays, and $1 lands as $2.new when it
# differs ($3 names the template in the message).
keep_or_put_config() {
    ensure_dir "$(dirname "$2")"
    if [ ! -e "$root$2" ]; then
        record c "$2"
        cp "$1" "$root$2" || fail "cannot write $root$2"
        say "installed $2"
        changed=yes
    elif cmp -s "$1" "$root$2"; then
        say "unchanged $2"
    else
        record f "$2.new"
        cp "$1" "$root$2.new" || fail "cannot write $root$2.new"
        say "kept $2 as it is (it differs from $3, which is in $2.new: compare them and merge by hand)"
    fi
    for f in "$root$2" "$root$2.new"; do
        [ -e "$f" ] || continue
        chmod 0640 "$f"
        if gid=$(target_id group); then chgrp "$gid" "$f"; fi
    done
}

# Whether service $1 runs now (on this system; under --prefix only the SysV script can tell,
# from the pidfile in the prefix).
service_active() {
    case $init in
        systemd) [ -z "$root" ] && [ -d /run/systemd/system ] && systemctl is-active --quiet "$1" ;;
        openrc) [ -z "$root" ] && rc-service "$1" status >/dev/null 2>&1 ;;
        procd) [ -z "$root" ] && "/etc/init.d/$1" running >/dev/null 2>&1 ;;
        sysv) [ -x "$root/etc/init.d/$1" ] && HL_PREFIX="$root" "$root/etc/init.d/$1" status >/dev/null 2>&1 ;;
    esac
}

restart_service() {
    case $init in
        systemd) systemctl restart "$1" ;;
        openrc) rc-service "$1" restart ;;
        procd) "/etc/init.d/$1" restart ;;
        sysv) HL_PREFIX="$root" "$root/etc/init.d/$1" restart ;;
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

# The numeric id of group $1 in the target's group file.
group_id() {
    [ -r "$root/etc/group" ] || return 1
    awk -F: -v n="$1" '$1 == n { print $3; found = 1 } END { exit !found }' "$root/etc/group"
}

# The database folder: created when missing, left alone when it exists (it may be the
# application's own folder). Never recorded, so never removed. A created folder belongs to the
# user $NAME and to the application's group (--db-group, else the group of the nearest existing
# parent folder unless that is root's, else $NAME), mode 2770: the node writes it as its owner,
# the application through the group, and setgid keeps every new file (-wal, -shm, snapshot
# copies) in that group.
# Sets db_dir_exists, parent (the nearest existing folder), group and db_gid (the group a created
# folder gets; db_gid empty while that group does not exist yet, in an image).
choose_db_group() {
    db_dir_exists=no
    [ ! -d "$root$db_dir" ] || db_dir_exists=yes
    parent=$db_dir
    while [ ! -d "$root$parent" ]; do parent=$(dirname "$parent"); done
    db_gid=""
    if [ -n "$db_group" ]; then
        group=$db_group
        db_gid=$(group_id "$db_group") || {
            [ -n "$root" ] || usage_error "--db-group $db_group: no such group"
            db_gid=""
        }
    else
        pgid=$(stat -c %g "$root$parent")
        if [ "$pgid" != 0 ]; then
            db_gid=$pgid
            group=$(awk -F: -v g="$pgid" '$3 == g { print $1; exit }' "$root/etc/group" 2>/dev/null || true)
            group=${group:-$pgid}
        else
            group=$NAME
            db_gid=$(target_id group) || db_gid=""
        fi
    fi
}

# An existing database folder is the application's: left alone, but a folder the service user
# cannot write would only fail at start ("readonly database"), so say now what to run.
warn_db_dir_access() {
    [ "$init" != procd ] || return 0 # OpenWrt: the node runs as root
    uid=$(target_id passwd) || return 0
    # shellcheck disable=SC2046 # four words, split on purpose
    set -- $(stat -c '%u %g %a %G' "$root$db_dir")
    d_uid=$1 d_gid=$2 d_mode=$3 d_group=$4
    perm_u=$(((0$d_mode >> 6) & 2)) perm_g=$(((0$d_mode >> 3) & 2)) perm_o=$((0$d_mode & 2))
    [ "$d_uid" = "$uid" ] && [ "$perm_u" != 0 ] && return 0
    [ "$perm_o" != 0 ] && return 0
    if [ "$perm_g" != 0 ]; then
        # In the folder's group: its primary group, or listed as a member.
        [ "$(awk -F: -v n="$NAME" '$1 == n { print $4 }' "$root/etc/passwd")" = "$d_gid" ] && return 0
        awk -F: -v g="$d_gid" -v n="$NAME" '$3 == g { split($4, m, ","); for (i in m) if (m[i] == n) f = 1 } END { exit !f }' \
            "$root/etc/group" 2>/dev/null && return 0
    fi
    say "warning: user $NAME cannot write $db_dir (group $d_group, mode $d_mode): the node will fail to open the" \
        "database. Let it in through the application's group: usermod -aG $d_group $NAME && chmod g+ws $db_dir"
}

prepare_db_dir() {
    if [ "$db_dir_exists" = yes ]; then
        say "kept $db_dir as it is (user $NAME needs write access: database, -wal, -shm)"
        warn_db_dir_access
        return
    fi
    mkdir -p "$root$db_dir" || fail "cannot create $root$db_dir"
    uid=$(target_id passwd) || uid=""
    # Every folder created on the way gets the same owner and mode (the service must traverse
    # them); a root-owned 2770 folder would shut out both the node and the application.
    dir=$db_dir
    while [ "$dir" != "$parent" ]; do
        [ -z "$uid" ] || chown "$uid" "$root$dir"
        [ -z "$db_gid" ] || chgrp "$db_gid" "$root$dir"
        if [ "$dir" = "$db_dir" ]; then chmod 2770 "$root$dir"; else chmod 0755 "$root$dir"; fi
        dir=$(dirname "$dir")
    done
    if [ -n "$uid" ] && [ -n "$db_gid" ]; then
        say "created $db_dir (owner $NAME, group $group, mode 2770): the application writes it as group $group"
    elif [ "$init" = systemd ]; then
        # An image without the user yet: systemd-tmpfiles sets owner and group at first boot.
        say "created $db_dir (mode 2770): its owner $NAME and group $group are set at first boot (tmpfiles.d)"
    else
        say "created $db_dir (mode 2770): once the user $NAME exists, chown $NAME:$group $db_dir"
    fi
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
    [ -z "$leaf_url" ] || find_leaf_bin
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
    # Running now? Asked before anything is replaced: a running node is restarted at the end
    # when this run changed its files (an upgrade), so the new binary is the one that runs.
    was_active=no
    service_active "$NAME" && was_active=yes
    leaf_active=no
    [ -z "$leaf_url" ] || ! service_active "$NAME-leaf" || leaf_active=yes
    changed=no
    choose_db_group
    put_file "$bin" "/usr/bin/$NAME" 0755
    install_config
    install_service
    node_changed=$changed
    changed=no
    [ -z "$leaf_url" ] || install_leaf
    leaf_changed=$changed
    prepare_db_dir
    record i "$init"

    # Merge with what earlier runs installed, so --uninstall removes both.
    ensure_dir "$(dirname "$MANIFEST")"
    if [ -f "$root$MANIFEST" ]; then cat "$root$MANIFEST" >>"$new_manifest"; fi
    sort -u "$new_manifest" >"$work/merged"
    put_file "$work/merged" "$MANIFEST" 0644 >/dev/null
    if [ -z "$root" ] && [ "$init" = systemd ]; then systemctl daemon-reload || true; fi

    restarted=""
    if [ "$leaf_active" = yes ] && [ "$leaf_changed" = yes ]; then
        restart_service "$NAME-leaf" >/dev/null || fail "the leaf was running and did not restart: see its log"
        say "restarted the running $NAME-leaf service (its files changed)"
    fi
    if [ "$was_active" = yes ] && [ "$node_changed" = yes ]; then
        restart_service "$NAME" >/dev/null || fail "$NAME was running and did not restart: see its log"
        say "restarted the running $NAME service: the new version runs now"
        restarted=yes
    fi

    if [ -n "$restarted" ]; then
        say "done"
    elif [ -z "$root" ]; then
        case $init in
            systemd) next="systemctl start $NAME; journalctl -u $NAME -f" ;;
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
                    systemctl disable --now "$NAME-leaf" >/dev/null 2>&1 || true
                fi
                ;;
            sysv | openrc | procd)
                for s in "$NAME" "$NAME-leaf"; do
                    if [ -x "/etc/init.d/$s" ]; then "/etc/init.d/$s" stop || true; fi
                    if [ "$installed_init" = sysv ] && command -v update-rc.d >/dev/null 2>&1; then
                        update-rc.d -f "$s" remove >/dev/null 2>&1 || true
                    fi
                done
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
        for f in "$root$CONFIG" "$root$CONFIG.new" "$root$LEAF_CONF" "$root$LEAF_CONF.new" "$root$LEAF_CREDS" \
            "$root/var/log/$NAME.log" "$root/var/log/$NAME.log".* "$root/var/log/$NAME-leaf.log" "$root/var/log/$NAME-leaf.log".*; do
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
