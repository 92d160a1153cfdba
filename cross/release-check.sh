#!/usr/bin/env bash
# Checks the artifacts of cross/release.sh the way a user meets them: the checksums, each .deb
# unpacked into a temp root (files, modes, conffiles, the systemd unit, the maintainer scripts;
# installed with `dpkg --root` when dpkg is here and we are root, which runs postinst and prerm
# against the temp root), each tarball unpacked and installed with its own boards/install.sh
# into a temp root; every binary answers --version with the release's version and its target
# (natively, or under qemu-*-static).
#
#   bash cross/release-check.sh [DIR]     # default DIR: dist/release
#
# Prints one line per check and "release-check: N passed, N failed"; exit 1 on any failure.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$repo/dist/release}"
[ -d "$dir" ] || { echo "release-check: error: $dir: no such folder (run bash cross/release.sh first)" >&2; exit 2; }
dir="$(cd "$dir" && pwd)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/hl-release-check.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

passed=0
failed=0
check() {
    local desc=$1
    shift
    if "$@"; then
        echo "ok    $desc"
        passed=$((passed + 1))
    else
        echo "FAIL  $desc"
        failed=$((failed + 1))
    fi
}
mode_is() { [ "$(stat -c %a "$1" 2>/dev/null)" = "$2" ]; }
owner_is() { [ "$(stat -c %u:%g "$1" 2>/dev/null)" = "$2" ]; }

# The binary's --version, run natively or under user-mode qemu; empty when it cannot run here.
run_version() {
    local bin=$1 t=$2 runner=()
    case "$t:$(uname -m)" in
        x86_64-*:x86_64 | aarch64-*:aarch64) ;;
        x86_64-*:*) runner=(qemu-x86_64-static) ;;
        aarch64-*:*) runner=(qemu-aarch64-static) ;;
        armv7-*:*) runner=(qemu-arm-static) ;;
        arm-*:*) runner=(qemu-arm-static -cpu arm1176) ;;
    esac
    if [ "${#runner[@]}" -gt 0 ] && ! command -v "${runner[0]}" >/dev/null 2>&1; then
        echo "skip  $bin --version: ${runner[0]} is not installed (apt-get install qemu-user-static)" >&2
        return 0
    fi
    "${runner[@]}" "$bin" --version
}
version_ok() { # version_ok BIN TARGET
    local v
    v=$(run_version "$1" "$2") || return 1
    [ -z "$v" ] && return 0
    echo "      $v"
    case "$v" in
        "harmonylite $version (commit "*", target $2)") return 0 ;;
        *) echo "      expected: harmonylite $version (commit ..., target $2)"; return 1 ;;
    esac
}

cd "$dir"
check "SHA256SUMS verifies" sha256sum --quiet -c SHA256SUMS
shopt -s nullglob
debs=(harmonylite_"$version"_*.deb)
tars=(harmonylite-"$version"-*.tar.gz)
check "at least one .deb or tarball of version $version" [ "$((${#debs[@]} + ${#tars[@]}))" -gt 0 ]
for f in "${debs[@]}" "${tars[@]}"; do
    check "$f is listed in SHA256SUMS" grep -q "  $f\$" SHA256SUMS
done

for deb in "${debs[@]}"; do
    arch=${deb%.deb}
    arch=${arch##*_}
    case $arch in
        arm64) t=aarch64-unknown-linux-musl ;;
        armhf) t=armv7-unknown-linux-musleabihf ;;
        amd64) t=x86_64-unknown-linux-musl ;;
        *) check "$deb: known architecture $arch" false; continue ;;
    esac
    echo "== $deb"
    r=$tmp/deb-$arch/root
    c=$tmp/deb-$arch/control
    mkdir -p "$r" "$c"
    # Unpacked the way dpkg does when it is here, else by hand (a .deb is an ar archive).
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$deb" "$r"
        dpkg-deb -e "$deb" "$c"
    else
        (cd "$tmp/deb-$arch" && ar x "$dir/$deb" && tar -xzf data.tar.gz -C root && tar -xzf control.tar.gz -C control)
    fi
    check "$deb: ar members are debian-binary, control.tar.gz, data.tar.gz" \
        [ "$(ar t "$deb" | tr '\n' ' ')" = "debian-binary control.tar.gz data.tar.gz " ]
    check "$deb: control: Package harmonylite, Version $version, Architecture $arch" \
        grep -qx -e "Package: harmonylite" "$c/control"
    check "$deb: control: Version $version" grep -qx "Version: $version" "$c/control"
    check "$deb: control: Architecture $arch" grep -qx "Architecture: $arch" "$c/control"
    check "$deb: the config is a conffile" grep -qx /etc/harmonylite/harmonylite.toml "$c/conffiles"
    for s in postinst prerm postrm; do check "$deb: $s is executable" test -x "$c/$s"; done
    check "$deb: /usr/bin/harmonylite 0755 root:root" bash -c "[ -x '$r/usr/bin/harmonylite' ] && [ \"\$(stat -c %a '$r/usr/bin/harmonylite')\" = 755 ]"
    check "$deb: /etc/harmonylite/harmonylite.toml 0640" mode_is "$r/etc/harmonylite/harmonylite.toml" 640
    check "$deb: files are owned by root" bash -c "[ -z \"\$(find '$r' ! -user 0 -o ! -group 0 | head -1)\" ] || [ \"\$(id -u)\" != 0 ]"
    unit=$r/lib/systemd/system/harmonylite.service
    check "$deb: systemd unit runs /usr/bin/harmonylite with the config" grep -qx \
        "ExecStart=/usr/bin/harmonylite --config /etc/harmonylite/harmonylite.toml" "$unit"
    check "$deb: unit: ReadWritePaths=/var/lib/harmonylite, no placeholder left" bash -c \
        "grep -qx 'ReadWritePaths=/var/lib/harmonylite' '$unit' && ! grep -q '@[A-Z_]*@' '$unit'"
    check "$deb: sysusers.d, tmpfiles.d, SysV script, logrotate" test -f "$r/usr/lib/sysusers.d/harmonylite.conf" \
        -a -f "$r/usr/lib/tmpfiles.d/harmonylite.conf" -a -x "$r/etc/init.d/harmonylite" -a -f "$r/etc/logrotate.d/harmonylite"
    if command -v systemd-analyze >/dev/null 2>&1; then
        sed "s|^ExecStart=/usr/bin/harmonylite|ExecStart=$r/usr/bin/harmonylite|" "$unit" >"$tmp/harmonylite.service"
        check "$deb: systemd-analyze verify the unit" bash -c "out=\$(systemd-analyze verify '$tmp/harmonylite.service' 2>&1) && [ -z \"\$out\" ] || { echo \"\$out\"; false; }"
    fi
    check "$deb: harmonylite --version" version_ok "$r/usr/bin/harmonylite" "$t"
    if [ "$arch" = armhf ]; then
        # On a Pi Zero (uname -m: armv6l) the ARMv7 binary would die with SIGILL: refused, with
        # what to install instead; an ARMv7 board passes.
        mkdir -p "$tmp/fake-$arch"
        # shellcheck disable=SC2016 # expanded by the fake uname
        printf '#!/bin/sh\necho "$HL_FAKE_MACHINE"\n' >"$tmp/fake-$arch/uname"
        chmod +x "$tmp/fake-$arch/uname"
        check "$deb: preinst refuses an ARMv6 board and names the armv6 tarball" bash -c \
            "! out=\$(HL_FAKE_MACHINE=armv6l PATH='$tmp/fake-$arch':\$PATH sh '$c/preinst' install 2>&1) && grep -q arm-unknown-linux-musleabihf <<<\"\$out\""
        check "$deb: preinst accepts an ARMv7 board" env HL_FAKE_MACHINE=armv7l PATH="$tmp/fake-$arch:$PATH" sh "$c/preinst" install
    fi

    # A real install with dpkg into a temp root: postinst creates the user (useradd --prefix),
    # the database folder and the boot link; removal takes the files and leaves the config.
    if command -v dpkg >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && useradd --help 2>&1 | grep -q -- --prefix; then
        R=$tmp/dpkg-$arch
        mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/etc"
        : >"$R/var/lib/dpkg/status"
        printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
        printf 'root:x:0:\n' >"$R/etc/group"
        printf 'root:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
        printf 'root:*::\n' >"$R/etc/gshadow"
        dp=(dpkg --root="$R" --force-script-chrootless --force-architecture --force-not-root
            --log=/dev/null --no-triggers)
        check "$deb: dpkg --root install runs postinst" bash -c "$(printf '%q ' "${dp[@]}") -i '$dir/$deb' >'$tmp/dpkg.out' 2>&1 || { cat '$tmp/dpkg.out'; false; }"
        check "$deb: postinst created the user harmonylite" grep -q '^harmonylite:' "$R/etc/passwd"
        gid=$(awk -F: '$1 == "harmonylite" { print $3 }' "$R/etc/group")
        uid=$(awk -F: '$1 == "harmonylite" { print $3 }' "$R/etc/passwd")
        check "$deb: config 0640 root:harmonylite" bash -c "[ \"\$(stat -c %a:%u:%g '$R/etc/harmonylite/harmonylite.toml')\" = 640:0:$gid ]"
        check "$deb: database folder 2770 harmonylite:harmonylite" bash -c "[ \"\$(stat -c %a:%u:%g '$R/var/lib/harmonylite')\" = 2770:$uid:$gid ]"
        check "$deb: enabled at boot" test -L "$R/etc/systemd/system/multi-user.target.wants/harmonylite.service"
        check "$deb: dpkg --root reinstall (upgrade path) succeeds" bash -c "$(printf '%q ' "${dp[@]}") -i '$dir/$deb' >'$tmp/dpkg.out' 2>&1 || { cat '$tmp/dpkg.out'; false; }"
        echo "# a local edit" >>"$R/etc/harmonylite/harmonylite.toml"
        check "$deb: dpkg --root remove" bash -c "$(printf '%q ' "${dp[@]}") -r harmonylite >'$tmp/dpkg.out' 2>&1 || { cat '$tmp/dpkg.out'; false; }"
        check "$deb: removed: binary and boot link gone, edited config kept" bash -c \
            "[ ! -e '$R/usr/bin/harmonylite' ] && [ ! -L '$R/etc/systemd/system/multi-user.target.wants/harmonylite.service' ] && grep -q 'a local edit' '$R/etc/harmonylite/harmonylite.toml'"
    else
        echo "skip  $deb: dpkg --root install (needs dpkg, root and useradd --prefix)"
    fi
done

for tarball in "${tars[@]}"; do
    name=${tarball%.tar.gz}
    t=${name#harmonylite-"$version"-}
    echo "== $tarball"
    x=$tmp/tar-$t
    mkdir -p "$x"
    tar -xzf "$tarball" -C "$x"
    d=$x/$name
    check "$tarball: binary, boards/install.sh, README.md" test -x "$d/harmonylite" -a -f "$d/boards/install.sh" -a -f "$d/README.md"
    check "$tarball: README excerpt has the Raspberry Pi section with its download steps" bash -c \
        "grep -q '^## Running on a Raspberry Pi' '$d/README.md' && grep -q '^### Download the release for your board' '$d/README.md' && grep -q 'boards/install.sh' '$d/README.md'"
    check "$tarball: README excerpt has the leaf and the upgrade policy" bash -c \
        "grep -q '^### Leaf-node topology' '$d/README.md' && grep -q '^### Mixed versions on one stream' '$d/README.md'"
    check "$tarball: harmonylite --version" version_ok "$d/harmonylite" "$t"
    R=$x/root
    mkdir -p "$R/lib/systemd"
    printf '#!/bin/sh\n' >"$R/lib/systemd/systemd"
    chmod +x "$R/lib/systemd/systemd"
    check "$tarball: sh boards/install.sh --prefix (finds its binary)" bash -c "sh '$d/boards/install.sh' --prefix '$R' >'$tmp/install.out' 2>&1 || { cat '$tmp/install.out'; false; }"
    check "$tarball: installed /usr/bin/harmonylite is the tarball's" cmp -s "$d/harmonylite" "$R/usr/bin/harmonylite"
    check "$tarball: installed the systemd unit and the config" test -f "$R/etc/systemd/system/harmonylite.service" -a -f "$R/etc/harmonylite/harmonylite.toml"
done

echo "release-check: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
