#!/usr/bin/env bash
# Release artifacts: per target a tarball (the binary, boards/, a README excerpt), a .deb for
# the Debian architectures (arm64, armhf, amd64), and SHA256SUMS over all of them.
#
#   bash cross/release.sh                                  # aarch64, armv7, x86_64 -> dist/release
#   bash cross/release.sh --target aarch64 --target armv7  # some targets (CI: the qemu-test ones)
#   bash cross/release.sh --no-build                       # package dist/harmonylite-<target> as is
#   bash cross/release.sh --check                          # then check the artifacts (cross/release-check.sh)
#
# Targets (short names as in cross/build.sh): aarch64 -> .deb arm64, armv7 -> .deb armhf,
# x86_64 -> .deb amd64; on request (--target armv6; not by default: its binary is 3.15 MiB, over
# the 3 MiB goal) armv6 (arm-unknown-linux-musleabihf: Pi Zero, Zero W, Pi 1) -> tarball only
# (Debian's armhf is ARMv7). Output, in --out (default dist/release):
#   harmonylite-<version>-<target>.tar.gz   harmonylite-<version>-<target>/{harmonylite,boards/,README.md}
#   harmonylite_<version>_<debarch>.deb     /usr/bin/harmonylite, /etc/harmonylite/harmonylite.toml
#                                           (conffile, the board profile's config), the systemd
#                                           unit, sysusers.d/tmpfiles.d, the SysV script and
#                                           logrotate file; postinst creates the user and the
#                                           database folder and restarts a running node on upgrade
#   SHA256SUMS                              `sha256sum -c SHA256SUMS` checks a download
#
# The .deb is built with dpkg-deb when it is installed, else with ar and tar (a .deb is an ar
# archive of debian-binary, control.tar.gz, data.tar.gz); HL_DEB_WITH_AR=1 forces the latter.
# Files are owned by root and dated SOURCE_DATE_EPOCH (default: the commit's date), so the same
# commit and binaries give the same bytes. HL_DEB_MAINTAINER sets the control file's Maintainer.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/dist/release"
bins="$repo/dist"
build=1
check=0
targets=()

say() { echo "release: $*" >&2; }
die() { echo "release: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

full_target() {
    case "$1" in
        aarch64 | arm64 | aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
        armv7 | armhf | armv7-unknown-linux-musleabihf) echo armv7-unknown-linux-musleabihf ;;
        x86_64 | amd64 | x86_64-unknown-linux-musl) echo x86_64-unknown-linux-musl ;;
        armv6 | arm | arm-unknown-linux-musleabihf) echo arm-unknown-linux-musleabihf ;;
        *) die "unknown target '$1' (known: aarch64, armv7, x86_64, armv6)" ;;
    esac
}
# The Debian architecture of a target's .deb, empty for none; and its board profile.
deb_arch() {
    case "$1" in
        aarch64-*) echo arm64 ;;
        armv7-*) echo armhf ;;
        x86_64-*) echo amd64 ;;
        *) echo "" ;;
    esac
}
profile_of() {
    case "$1" in
        aarch64-*) echo rpi-aarch64 ;;
        armv7-*) echo rpi-armv7 ;;
        arm-*) echo rpi-armv6 ;;
        x86_64-*) echo generic-x86_64 ;;
    esac
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --target) [ "$#" -ge 2 ] || die "--target needs a value"; targets+=("$(full_target "$2")"); shift 2 ;;
        --target=*) targets+=("$(full_target "${1#--target=}")"); shift ;;
        --out) [ "$#" -ge 2 ] || die "--out needs a value"; out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --no-build) build=0; shift ;;
        --check) check=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf
    x86_64-unknown-linux-musl)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
[ -n "$version" ] || die "no version in Cargo.toml"
maintainer=${HL_DEB_MAINTAINER:-HarmonyLite maintainers <harmonylite@example.invalid>}

# The build sees the caller's environment as is: a SOURCE_DATE_EPOCH set only here would
# change build scripts' inputs and make cargo rebuild what cross/qemu-test.sh just built
# (measured: 131 s instead of a no-op).
if [ "$build" = 1 ]; then
    args=()
    for t in "${targets[@]}"; do args+=(--target "$t"); done
    bash "$repo/cross/build.sh" "${args[@]}" --out "$bins"
fi
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
for t in "${targets[@]}"; do
    [ -f "$bins/harmonylite-$t" ] || die "$bins/harmonylite-$t is missing: run without --no-build (or bash cross/build.sh --target $t)"
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
work=$(mktemp -d "${TMPDIR:-/tmp}/hl-release.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Deterministic archives: sorted names, root-owned, one date.
det_tar() { # det_tar ARCHIVE DIR PATH...
    local archive=$1 dir=$2
    shift 2
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        --format=gnu -C "$dir" -cf - "$@" | gzip -9n >"$archive"
}

# The README sections an operator needs on the board, cut from the README at this commit.
readme_excerpt() {
    echo "# HarmonyLite $version: the operator's part of the README"
    echo
    echo "An excerpt of the project's README.md at this release (the whole file: in the source"
    echo "repository). \`harmonylite --version\` names the commit and the target."
    echo
    # A kept "##" section keeps its "###" subsections; "### Leaf-node topology" is kept alone.
    awk '
        /^## / {
            parent = ($0 ~ /^## Running on a Raspberry Pi/ || $0 ~ /^## Upgrading HarmonyLite/ ||
                      $0 ~ /^## Configuration reference/ || $0 ~ /^## NATS security/)
            keep = parent
        }
        /^### / { keep = parent || $0 ~ /^### Leaf-node topology/ }
        keep { print }
    ' "$repo/README.md"
}

# boards/ as shipped: the scripts and templates, not the tests or the .deb's own scripts.
stage_boards() {
    local dest=$1
    mkdir -p "$dest"
    (cd "$repo/boards" && tar --exclude=test.sh --exclude=deb -cf - .) | tar -C "$dest" -xf -
}

make_tarball() {
    local t=$1 name="harmonylite-$version-$1" dir
    dir="$work/tar/$name"
    mkdir -p "$dir"
    install -m 0755 "$bins/harmonylite-$t" "$dir/harmonylite"
    stage_boards "$dir/boards"
    readme_excerpt >"$dir/README.md"
    det_tar "$out/$name.tar.gz" "$work/tar" "$name"
    say "$name.tar.gz"
}

make_deb() {
    local t=$1 arch=$2 pkg="harmonylite_${version}_$2" root ctl profile size
    root="$work/deb-$arch/root"
    ctl="$work/deb-$arch/control"
    mkdir -p "$root" "$ctl"
    profile=$(profile_of "$t")
    install -D -m 0755 "$bins/harmonylite-$t" "$root/usr/bin/harmonylite"
    install -d -m 0755 "$root/etc/harmonylite"
    sh "$repo/boards/install.sh" --print-config --profile "$profile" >"$root/etc/harmonylite/harmonylite.toml"
    chmod 0640 "$root/etc/harmonylite/harmonylite.toml"
    install -d -m 0755 "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" \
        "$root/etc/init.d" "$root/etc/logrotate.d" "$root/usr/share/doc/harmonylite"
    sed -e "s|@DB_DIR@|/var/lib/harmonylite|" -e "s|@PROTECT_HOME@|yes|" \
        "$repo/boards/init/harmonylite.service" >"$root/lib/systemd/system/harmonylite.service"
    printf 'u harmonylite - "HarmonyLite sidecar" /var/lib/harmonylite\n' >"$root/usr/lib/sysusers.d/harmonylite.conf"
    sed -e "s|@DB_DIR@|/var/lib/harmonylite|" -e "s|@DB_GROUP@|harmonylite|" \
        "$repo/boards/init/harmonylite.tmpfiles" >"$root/usr/lib/tmpfiles.d/harmonylite.conf"
    install -m 0755 "$repo/boards/init/harmonylite.sysv" "$root/etc/init.d/harmonylite"
    install -m 0644 "$repo/boards/init/harmonylite.logrotate" "$root/etc/logrotate.d/harmonylite"
    readme_excerpt >"$root/usr/share/doc/harmonylite/README.md"
    chmod 0644 "$root/lib/systemd/system/harmonylite.service" "$root/usr/lib/sysusers.d/harmonylite.conf" \
        "$root/usr/lib/tmpfiles.d/harmonylite.conf" "$root/usr/share/doc/harmonylite/README.md"
    size=$(du -sk "$root" | cut -f1)
    cat >"$ctl/control" <<EOF
Package: harmonylite
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Section: database
Priority: optional
Description: leaderless SQLite replication sidecar over NATS JetStream
 Runs beside an application, captures its SQLite writes with triggers and replicates
 them through NATS JetStream with last-writer-wins. Static binary (board profile
 $profile); a systemd unit and a SysV script; the config is
 /etc/harmonylite/harmonylite.toml.
EOF
    printf '%s\n' /etc/harmonylite/harmonylite.toml /etc/init.d/harmonylite /etc/logrotate.d/harmonylite >"$ctl/conffiles"
    for s in postinst prerm postrm; do install -m 0755 "$repo/boards/deb/$s" "$ctl/$s"; done
    if [ -f "$repo/boards/deb/preinst.$arch" ]; then install -m 0755 "$repo/boards/deb/preinst.$arch" "$ctl/preinst"; fi
    chmod 0644 "$ctl/control" "$ctl/conffiles"
    (cd "$root" && find . -type f ! -path './etc/*' -printf '%P\n' | LC_ALL=C sort | xargs -r md5sum) >"$ctl/md5sums"
    chmod 0644 "$ctl/md5sums"
    find "$root" "$ctl" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
    rm -f "$out/$pkg.deb"
    if command -v dpkg-deb >/dev/null 2>&1 && [ "${HL_DEB_WITH_AR:-}" != 1 ]; then
        mkdir -p "$work/deb-$arch/pkg"
        cp -a "$root/." "$work/deb-$arch/pkg/"
        cp -a "$ctl" "$work/deb-$arch/pkg/DEBIAN"
        dpkg-deb --root-owner-group -Zgzip --build "$work/deb-$arch/pkg" "$out/$pkg.deb" >/dev/null
    else
        command -v ar >/dev/null 2>&1 || die "neither dpkg-deb nor ar is installed (Debian: binutils)"
        local d="$work/deb-$arch/ar"
        mkdir -p "$d"
        echo "2.0" >"$d/debian-binary"
        det_tar "$d/control.tar.gz" "$ctl" .
        det_tar "$d/data.tar.gz" "$root" .
        touch -d "@$SOURCE_DATE_EPOCH" "$d/debian-binary"
        # D: deterministic (zero dates and owners); the member order is the format's.
        (cd "$d" && ar -rcD "$out/$pkg.deb" debian-binary control.tar.gz data.tar.gz)
    fi
    say "$pkg.deb"
}

for t in "${targets[@]}"; do
    make_tarball "$t"
    arch=$(deb_arch "$t")
    [ -z "$arch" ] || make_deb "$t" "$arch"
done

# Over this version's artifacts (all of them in --out, also from an earlier run's targets).
(cd "$out" && shopt -s nullglob && rm -f SHA256SUMS &&
    sha256sum -- "harmonylite-$version-"*.tar.gz "harmonylite_${version}_"*.deb >SHA256SUMS.tmp &&
    mv SHA256SUMS.tmp SHA256SUMS)
say "done: $out"
sed 's/^/  /' "$out/SHA256SUMS" >&2

if [ "$check" = 1 ]; then
    bash "$repo/cross/release-check.sh" "$out"
fi
