#!/usr/bin/env bash
# Static, stripped musl release binaries of `harmonylite` for small Linux devices.
#
#   bash cross/build.sh                     # aarch64, armv7, x86_64 (same as --all)
#   bash cross/build.sh --target aarch64-unknown-linux-musl --target armv7 --out /tmp/dist
#
# Targets: aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf, x86_64-unknown-linux-musl,
# and on request arm-unknown-linux-musleabihf (ARMv6 hard-float: Pi Zero / Zero W / Pi 1; not in
# --all: 3,301,568 bytes, over the 3 MiB goal); short names aarch64, armv7, x86_64, armv6 work too. Output: <out>/harmonylite-<target> (default
# out: dist/ at the repo root); each one's size is printed and `file` must say it is a
# statically linked, stripped executable of the right architecture, or the script fails.
#
# How: zig is the C compiler, linker and musl libc (cargo-zigbuild drives it), so the bundled
# SQLite and ring's C/asm are cross-compiled without any system cross toolchain, and no OpenSSL
# is involved (nats uses rustls). Both tools come pinned from PyPI into .tools/cross
# (gitignored), without root; a re-run with the tools in place downloads nothing and cargo
# rebuilds only what changed.
#
# The standard library is compiled from rust-src with the release profile, for size
# (RUSTC_BOOTSTRAP=1 cargo zigbuild -Z build-std=std,panic_abort
# -Z build-std-features=optimize_for_size, no unwind tables): aarch64 shrinks by ~0.5 MiB, and
# it needs no `rustup target add` (only the rust-src component), so it also works where rustup
# cannot fetch a target's std (an offline or partial rustup mirror). Panics still print their
# message and abort; they print no backtrace.
# --prebuilt-std uses rustup's prebuilt std instead (stable features only; larger), falling
# back to build-std for a target whose std `rustup target add` cannot fetch.
#
# Needs: Rust via rustup, Python 3 with pip (installed with apt-get when missing and root).
# Environment: HL_CROSS_TARGET_DIR (cargo target dir, default target/cross or
# target/cross-prebuilt).
set -euo pipefail

HL_ZIG_VERSION="0.17.0"            # PyPI `ziglang`
HL_CARGO_ZIGBUILD_VERSION="0.24.0" # PyPI `cargo-zigbuild` (the same binary as crates.io's)

ALL_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools/cross"
out="$repo/dist"
prebuilt_std=0

say() { echo "cross: $*" >&2; }
die() { echo "cross: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

full_target() {
    case "$1" in
        aarch64|arm64|aarch64-unknown-linux-musl) echo aarch64-unknown-linux-musl ;;
        armv7|armhf|armv7-unknown-linux-musleabihf) echo armv7-unknown-linux-musleabihf ;;
        x86_64|amd64|x86_64-unknown-linux-musl) echo x86_64-unknown-linux-musl ;;
        armv6|arm|arm-unknown-linux-musleabihf) echo arm-unknown-linux-musleabihf ;;
        *) die "unknown target '$1' (known: ${ALL_TARGETS[*]})" ;;
    esac
}

targets=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --target) [ "$#" -ge 2 ] || die "--target needs a value"; targets+=("$(full_target "$2")"); shift 2 ;;
        --target=*) targets+=("$(full_target "${1#--target=}")"); shift ;;
        --all) targets+=("${ALL_TARGETS[@]}"); shift ;;
        --out) [ "$#" -ge 2 ] || die "--out needs a value"; out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --prebuilt-std) prebuilt_std=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${ALL_TARGETS[@]}")
# Deduplicate, keep order.
declare -A seen=()
uniq=()
for t in "${targets[@]}"; do
    if [ -z "${seen[$t]:-}" ]; then seen[$t]=1; uniq+=("$t"); fi
done
targets=("${uniq[@]}")
if [ "$prebuilt_std" = 1 ]; then
    target_dir="${HL_CROSS_TARGET_DIR:-$repo/target/cross-prebuilt}"
else
    target_dir="${HL_CROSS_TARGET_DIR:-$repo/target/cross}"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    # apt_install PKG...: only as root with apt-get; `apt-get update` once per run.
    is_root && command -v apt-get >/dev/null 2>&1 || return 1
    if [ -z "${_apt_updated:-}" ]; then
        apt-get update -qq >&2 || return 1
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# ---------------------------------------------------------------------------------------------
# Tools: zig and cargo-zigbuild, pinned, in .tools/cross/py

tools_ok() {
    [ -x "$tools/py/ziglang/zig" ] && [ -x "$tools/py/bin/cargo-zigbuild" ] &&
        [ "$("$tools/py/ziglang/zig" version 2>/dev/null)" = "$HL_ZIG_VERSION" ] &&
        [ "$("$tools/py/bin/cargo-zigbuild" --version 2>/dev/null)" = "cargo-zigbuild $HL_CARGO_ZIGBUILD_VERSION" ]
}

if ! tools_ok; then
    say "installing ziglang==$HL_ZIG_VERSION and cargo-zigbuild==$HL_CARGO_ZIGBUILD_VERSION into $tools/py"
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (to install zig from PyPI)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        say "pip is missing; installing python3-pip with apt-get"
        apt_install python3-pip || die "python3 has no pip; install python3-pip (Debian) and retry"
    fi
    rm -rf "$tools/py"
    mkdir -p "$tools"
    # --target is a private folder: works without root and on Debian's externally managed Python.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --target "$tools/py" \
        "ziglang==$HL_ZIG_VERSION" "cargo-zigbuild==$HL_CARGO_ZIGBUILD_VERSION" >&2 ||
        die "pip install ziglang==$HL_ZIG_VERSION cargo-zigbuild==$HL_CARGO_ZIGBUILD_VERSION failed"
    tools_ok || die "installed, but $tools/py/ziglang/zig or $tools/py/bin/cargo-zigbuild does not report the pinned version"
fi
export PATH="$tools/py/ziglang:$tools/py/bin:$PATH"
# Keep zig's and cargo-zigbuild's caches (zig's compiled musl, libunwind, compiler-rt; the linker
# wrappers) with the tools, so one `rm -rf .tools` resets everything.
export ZIG_GLOBAL_CACHE_DIR="$tools/zig-cache"
export CARGO_ZIGBUILD_CACHE_DIR="$tools/zigbuild-cache"

if ! command -v file >/dev/null 2>&1; then
    say "the 'file' command is missing; installing it with apt-get"
    apt_install file || die "'file' is needed to check the binaries; install it (Debian: file) and retry"
fi

if ! command -v rustc >/dev/null 2>&1 || ! command -v cargo >/dev/null 2>&1; then
    die "Rust (cargo, rustc) is needed"
fi
sysroot="$(rustc --print sysroot)"

have_std() { compgen -G "$sysroot/lib/rustlib/$1/lib/libstd-*.rlib" >/dev/null; }

# Sets `mode` for target $1: "std" (rustup's prebuilt standard library, --prebuilt-std) or
# "build-std" (compiled from rust-src).
choose_mode() {
    local t="$1"
    mode=build-std
    if [ "$prebuilt_std" = 1 ]; then
        if have_std "$t"; then
            mode=std
        elif command -v rustup >/dev/null 2>&1 && rustup target add "$t" >/dev/null 2>&1 && have_std "$t"; then
            say "$t: installed its standard library (rustup target add)"
            mode=std
        else
            say "$t: no prebuilt standard library (rustup target add $t failed); building it from rust-src (-Z build-std)"
        fi
    fi
    if [ "$mode" = build-std ] && [ ! -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]; then
        command -v rustup >/dev/null 2>&1 || die "$t: -Z build-std needs rust-src and there is no rustup to add it"
        say "installing rust-src (rustup component add rust-src)"
        rustup component add rust-src >&2 || die "rustup component add rust-src failed"
    fi
}

# ---------------------------------------------------------------------------------------------
# Checks of a finished binary

expect_file() {
    case "$1" in
        aarch64-*) echo "ELF 64-bit LSB executable, ARM aarch64" ;;
        armv7-* | arm-*) echo "ELF 32-bit LSB executable, ARM, EABI5" ;;
        x86_64-*) echo "ELF 64-bit LSB executable, x86-64" ;;
    esac
}

runner_for() {
    case "$1" in
        aarch64-*) [ "$(uname -m)" = aarch64 ] && echo "" || echo qemu-aarch64-static ;;
        armv7-*) case "$(uname -m)" in armv7*|armv8l) echo "" ;; *) echo qemu-arm-static ;; esac ;;
        # As an ARM1176 (the Pi Zero's and Pi 1's CPU): an ARMv7 instruction is SIGILL there.
        arm-*) case "$(uname -m)" in armv6*|armv7*|armv8l) echo "" ;; *) echo "qemu-arm-static -cpu arm1176" ;; esac ;;
        x86_64-*) [ "$(uname -m)" = x86_64 ] && echo "" || echo qemu-x86_64-static ;;
    esac
}

verify() {
    local t="$1" bin="$2" desc want runner ver
    desc="$(file -b "$bin")"
    want="$(expect_file "$t")"
    case "$desc" in
        "$want"*) ;;
        *) die "$bin: file says '$desc', expected '$want...'" ;;
    esac
    case "$desc" in
        *"statically linked"*|*"static-pie linked"*) ;;
        *) die "$bin is not statically linked: $desc" ;;
    esac
    case "$desc" in
        *"dynamically linked"*|*interpreter*) die "$bin has a dynamic loader: $desc" ;;
    esac
    case "$desc" in
        *", stripped"*) ;;
        *) die "$bin is not stripped: $desc" ;;
    esac
    if [ "${t%%-*}" = armv7 ] || [ "${t%%-*}" = arm ]; then
        if command -v readelf >/dev/null 2>&1; then
            readelf -h "$bin" | grep -q "hard-float ABI" || die "$bin is not hard-float: $(readelf -h "$bin" | grep Flags)"
            # The CPU the code needs: an ARMv7 instruction in the ARMv6 build would be SIGILL on
            # a Pi Zero, and qemu (which emulates the newest ARM CPU) would not notice.
            want_arch=v7
            [ "${t%%-*}" = arm ] && want_arch=v6
            readelf -A "$bin" | grep -Eq "Tag_CPU_arch: ${want_arch}[A-Z]*$" ||
                die "$bin: ELF attributes say $(readelf -A "$bin" | grep Tag_CPU_arch: | head -1), expected $want_arch"
        fi
    fi
    say "$t: file: $desc"
    # Smoke run, natively or under user-mode qemu when it is installed (not required here).
    runner="$(runner_for "$t")"
    if [ -z "$runner" ]; then
        ver="$("$bin" --version)" || die "$bin --version failed"
        say "$t: runs: $ver"
    elif command -v "${runner%% *}" >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # the runner is a command with its options
        ver="$($runner "$bin" --version)" || die "$runner $bin --version failed"
        say "$t: runs under $runner: $ver"
    else
        say "$t: not run (${runner%% *} is not installed; apt-get install qemu-user-static)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Build

# All targets of one mode build in one cargo invocation: host build scripts and proc macros
# compile once, and cargo overlaps one target's single-threaded steps (SQLite's C, the LTO
# link) with the other's (cold aarch64 + armv7 together: ~3 min instead of ~2 x 3-6 min).
build_group() {
    local mode="$1"; shift
    local t tt cflags_var args=() envs=()
    for t in "$@"; do
        tt="$(echo "$t" | tr 'a-z-' 'A-Z_')"
        cflags_var="CFLAGS_$(echo "$t" | tr '-' '_')"
        # No unwind tables (panic = "abort": nothing unwinds): Rust code and C code.
        if [ "$mode" = std ]; then
            envs+=("CARGO_TARGET_${tt}_RUSTFLAGS=-C force-unwind-tables=no")
        else
            # -C link-self-contained=no: zig supplies crt1.o, musl and libunwind for every
            # target, whether or not rustup has the target's std (with its own musl).
            envs+=("CARGO_TARGET_${tt}_RUSTFLAGS=-C force-unwind-tables=no -C link-self-contained=no")
        fi
        envs+=("$cflags_var=${!cflags_var:-} -fno-asynchronous-unwind-tables -fno-unwind-tables")
        args+=(--target "$t")
    done
    # SQLite's statement journals stay in memory, in 1 KiB chunks (SQLITE_STMTJRNL_SPILL=-1).
    # By default each is one 64 KiB chunk, and zig's libc malloc (zig's own, not musl's)
    # serves anything over 32 KiB with mmap and unmaps it on free: an mmap/munmap pair and
    # fresh-page faults per replicated statement, half a replica's CPU (hl-bench e2e ratio
    # 0.12-0.13 -> 0.27-0.28 on x86_64; see BENCHMARKS.md). Native glibc builds keep the default.
    # In memory, a journal grows with the pages one statement changes: the node's multi-row
    # statements are written not to need one (capture::mark_published is UPDATE OR IGNORE).
    # SQLite features the node never uses, left out to keep the binary under 3 MiB (measured
    # on aarch64: -64,928 bytes, BENCHMARKS.md "Binary sizes"): sqlite_stat4 statistics, the
    # dbstat table, SOUNDEX, extension loading, deprecated and shared-cache APIs, progress
    # callbacks, sqlite3_complete, EXPLAIN, sqlite3_get_table, TCL variables, memory status.
    # Kept, because an application's schema may need them on the node's connection (its
    # triggers fire there when a change is applied): FTS3/4/5, R*Tree, JSON, UTF-16 databases,
    # auto-vacuum, date functions, foreign keys, window functions.
    sqlite_trim="-USQLITE_ENABLE_STAT4 -USQLITE_ENABLE_DBSTAT_VTAB -USQLITE_SOUNDEX"
    sqlite_trim+=" -USQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_DEPRECATED"
    sqlite_trim+=" -DSQLITE_OMIT_SHARED_CACHE -DSQLITE_OMIT_PROGRESS_CALLBACK -DSQLITE_OMIT_COMPLETE"
    sqlite_trim+=" -DSQLITE_OMIT_EXPLAIN -DSQLITE_OMIT_GET_TABLE -DSQLITE_OMIT_TCL_VARIABLE"
    sqlite_trim+=" -DSQLITE_DEFAULT_MEMSTATUS=0"
    envs+=("LIBSQLITE3_FLAGS=${LIBSQLITE3_FLAGS:-} -DSQLITE_STMTJRNL_SPILL=-1 $sqlite_trim")
    say "$* : cargo zigbuild --release ($mode) into $target_dir"
    if [ "$mode" = std ]; then
        env "${envs[@]}" cargo zigbuild --release --bin harmonylite "${args[@]}" \
            --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir" >&2
    else
        env RUSTC_BOOTSTRAP=1 "${envs[@]}" cargo zigbuild --release --bin harmonylite "${args[@]}" \
            --manifest-path "$repo/Cargo.toml" --target-dir "$target_dir" \
            -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size >&2
    fi
}

std_targets=()
bstd_targets=()
for t in "${targets[@]}"; do
    choose_mode "$t"
    if [ "$mode" = std ]; then std_targets+=("$t"); else bstd_targets+=("$t"); fi
done
start=$SECONDS
[ "${#std_targets[@]}" -eq 0 ] || build_group std "${std_targets[@]}"
[ "${#bstd_targets[@]}" -eq 0 ] || build_group build-std "${bstd_targets[@]}"
say "cargo finished in $((SECONDS - start)) s"

summary=()
for t in "${targets[@]}"; do
    built="$target_dir/$t/release/harmonylite"
    [ -f "$built" ] || die "$t: cargo finished but $built is missing"
    dest="$out/harmonylite-$t"
    cp -f "$built" "$dest.tmp"
    mv -f "$dest.tmp" "$dest"
    verify "$t" "$dest"
    bytes="$(stat -c %s "$dest")"
    mib="$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
    say "$t: $dest: $bytes bytes ($mib MiB)"
    summary+=("$(printf '%-32s %10s bytes  %5s MiB  %s' "$t" "$bytes" "$mib" "$dest")")
done

echo "cross: done:" >&2
for line in "${summary[@]}"; do
    echo "  $line"
done
