#!/usr/bin/env bash
# The test command: installs the pinned tools (scripts/tools.sh), then runs every test target
# (unit tests and the integration tests in tests/, which spawn nats-server and the binary), then
# boards/test.sh (the install and init scripts of boards/).
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh --test replication   # extra arguments go to `cargo test`
#
# HL_KEEP_TMP=1 keeps each integration test's temp dir (DBs, configs, node logs) and prints it.
# Exit code: 0 when every part passed.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
echo "test: NATS_SERVER=$NATS_SERVER" >&2
# Two test threads: every integration test runs its own nats-server and 1-3 nodes, and the
# machines this runs on have two cores.
# --no-fail-fast: one failing test file does not hide the results of the others.
if [ "$#" -gt 0 ]; then
    for a in "$@"; do
        if [ "$a" = "--" ]; then
            exec cargo test "$@" --test-threads=2
        fi
    done
    exec cargo test "$@" -- --test-threads=2
fi
# Everything: the cargo tests, then the board scripts (shellcheck, install/uninstall into temp
# prefixes, the SysV script starting and stopping the release binary against a nats-server).
rc=0
cargo test --all-targets --no-fail-fast -- --test-threads=2 || rc=$?
echo "== boards (boards/test.sh)" >&2
bash boards/test.sh || rc=$?
exit "$rc"
