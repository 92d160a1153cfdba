#!/usr/bin/env bash
# The ARM proof: builds the static aarch64 and armv7 binaries (cross/build.sh), then runs
# tests/arm.rs with them: each one runs as a node under user-mode qemu next to a native node on
# a loopback nats-server; rows written on either side must reach the other exactly and converge.
#
#   bash cross/qemu-test.sh              # what CI runs
#   bash cross/qemu-test.sh --nocapture  # extra arguments go to the test binary
#
# Installs what is missing: qemu-user-static (apt-get, as root), zig and cargo-zigbuild
# (cross/build.sh, into .tools/cross), nats-server (scripts/tools.sh, into .tools/py).
# binfmt_misc is not needed: the test calls qemu-aarch64-static / qemu-arm-static itself.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
start=$SECONDS

if ! command -v qemu-aarch64-static >/dev/null 2>&1 || ! command -v qemu-arm-static >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "qemu-test: installing qemu-user-static with apt-get" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >&2
    else
        echo "qemu-test: error: qemu-aarch64-static / qemu-arm-static missing; install qemu-user-static" >&2
        exit 1
    fi
fi

out="$repo/dist"
bash cross/build.sh --target aarch64-unknown-linux-musl --target armv7-unknown-linux-musleabihf --out "$out"
echo "qemu-test: built in $((SECONDS - start)) s" >&2

# shellcheck source=scripts/tools.sh
source scripts/tools.sh
export HL_ARM_BINS="$out/harmonylite-aarch64-unknown-linux-musl:$out/harmonylite-armv7-unknown-linux-musleabihf"
export HL_ARM_REQUIRED=1
echo "qemu-test: HL_ARM_BINS=$HL_ARM_BINS" >&2
status=0
cargo test --test arm -- --nocapture "$@" || status=$?
echo "qemu-test: finished in $((SECONDS - start)) s (exit $status)" >&2
exit "$status"
