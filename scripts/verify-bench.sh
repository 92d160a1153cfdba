#!/usr/bin/env bash
# Measures `harmonylite verify` on a large table (BENCHMARKS.md, "verify"): two nodes holding
# the same ROWS rows (default 1,000,000) of t(id INTEGER PRIMARY KEY, v TEXT), 100-byte v.
# Node a's database is filled before it starts (its rows are queued at start and published),
# node b starts empty and receives them. Then, on the settled fleet:
#   - the wall time of `harmonylite verify` (best of 3) when they agree,
#   - the bytes the verify client received from the nodes (nats-server's closed-connection
#     record of the client, out_bytes) per node,
#   - after ROWS/1000 rows are deleted behind node b's back (rows and version rows, no
#     capture), the time of `verify` finding them and of `verify --repair` fixing them.
#
#   cargo build --release --bin harmonylite
#   bash scripts/verify-bench.sh              # ROWS=1000000 by default
#   ROWS=100000 bash scripts/verify-bench.sh
#
# Needs python3 (sqlite3 and the HTTP client of its standard library) and the pinned
# nats-server (installed by scripts/tools.sh, sourced here).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/tools.sh
source "$repo/scripts/tools.sh" >/dev/null
bin="${HL_NODE_BIN:-$repo/target/release/harmonylite}"
rows="${ROWS:-1000000}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${HL_KEEP_TMP:-}" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
mon="$(free_port)"
"$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -m "$mon" -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mon/jsz')" 2>/dev/null && break
    sleep 0.1
done

python3 - "$work/a.db" "$work/b.db" "$rows" <<'EOF'
import sqlite3, sys
a, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for path in (a, b):
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    c.commit()
c = sqlite3.connect(a)
v = "x" * 100
c.executemany("INSERT INTO t VALUES (?, ?)", ((i, v) for i in range(1, n + 1)))
c.commit()
EOF

for name in a b; do
    id=$([ "$name" = a ] && echo 1 || echo 2)
    cat >"$work/$name.toml" <<EOF
db_path = "$work/$name.db"
node_id = $id
[nats]
urls = ["nats://127.0.0.1:$port"]
EOF
    "$bin" --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    pids+=($!)
done

count() { python3 -c "import sqlite3,sys; print(sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True).execute('SELECT count(*) FROM t').fetchone()[0])" "$1"; }
start=$(date +%s.%N)
until [ "$(count "$work/b.db")" = "$rows" ]; do sleep 1; done
echo "replicated $rows rows to node b in $(python3 -c "print(round($(date +%s.%N) - $start, 1))") s"

# settled: node a's outbox empty (verify waits for that too, but its time should not count)
until [ "$("$bin" status --config "$work/a.toml" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["outbox_changes"])')" = 0 ]; do sleep 1; done
sleep 2

timed() { # prints "<seconds> <exit code>" of the command
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    "$@" >"$work/last.out" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    echo "$(python3 -c "print(round($t1 - $t0, 2))") $rc"
}
client_bytes() { # out_bytes (server -> the verify client) of the newest closed client connection
    python3 - "$mon" <<'EOF'
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/connz?state=closed&limit=1000"))
c = [c for c in d.get("connections") or [] if "status --fleet" in (c.get("name") or "")]
c.sort(key=lambda c: c["cid"])
print(c[-1]["out_bytes"], c[-1]["in_bytes"])
EOF
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
for i in 1 2 3; do
    r=$(timed "$bin" verify --config "$work/a.toml")
    read -r out in <<<"$(client_bytes)"
    echo "verify (agree) round $i: ${r% *} s, exit ${r#* }, received $out bytes ($((out / 2)) per node), sent $in"
done
tail -3 "$work/last.out"

python3 - "$work/b.db" "$rows" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10)
n = int(sys.argv[2])
ids = [(i,) for i in range(1, n + 1, 1000)]
c.executemany("DELETE FROM t WHERE id = ?", ids)
c.executemany("DELETE FROM __hl_ver_t WHERE k0 = ?", ids)
c.execute("DELETE FROM __hl_log_t")
c.commit()
print(f"deleted {len(ids)} rows and their versions behind node b's back")
EOF
r=$(timed "$bin" verify --config "$work/a.toml")
read -r out in <<<"$(client_bytes)"
echo "verify (differ): ${r% *} s, exit ${r#* }, received $out bytes"
grep -m2 "DIFFER\|differ" "$work/last.out" || true
r=$(timed "$bin" verify --config "$work/a.toml" --repair)
echo "verify --repair: ${r% *} s, exit ${r#* }"
tail -2 "$work/last.out"
echo "node b holds $(count "$work/b.db") rows"
echo "VmHWM: a $(grep VmHWM /proc/"${pids[1]}"/status | xargs), b $(grep VmHWM /proc/"${pids[2]}"/status | xargs)"
