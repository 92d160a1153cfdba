#!/usr/bin/env bash
# The demo: three nodes replicating one SQLite table through one nats-server, on this machine.
#
#   bash scripts/demo.sh          # run the demo, stop everything, exit 0 on success
#   bash scripts/demo.sh --keep   # leave the three nodes and nats-server running until Ctrl-C
#
# What it does: installs the pinned nats-server (scripts/tools.sh), builds the release binary,
# starts nats-server with JetStream on a free loopback port in a temp dir, creates node1..3.db
# with the same table (the "app" is tests/app.py, plain Python sqlite3), starts three
# `harmonylite --config nodeN.toml`, then the app inserts on node1, updates on node2 and deletes
# on node3; after each step it waits until the three databases are identical and shows them.
# On failure it prints the node logs and exits non-zero.
set -euo pipefail

KEEP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
APP="$REPO/tests/app.py"
STEP_TIMEOUT=30   # seconds each step may take to converge
READY_TIMEOUT=30  # seconds for nats-server and each node to come up

if [ -t 1 ]; then
    say() { printf '\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '== %s\n' "$*"; }
fi

source scripts/tools.sh
say "building harmonylite (release)"
cargo build --release --quiet
BIN="$REPO/target/release/harmonylite"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/harmonylite-demo.XXXXXX")"
NATS_PID=""
NODE_PIDS=()
OK=0

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops a process: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "demo: pid $pid ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

show_logs() {
    local f n
    for f in "$WORK"/node*.log "$WORK"/nats-server.log; do
        [ -f "$f" ] || continue
        n=40; case "$f" in *nats-server.log) n=10 ;; esac
        echo "---- $(basename "$f") (last $n lines) ----" >&2
        tail -n "$n" "$f" >&2
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${NODE_PIDS[@]}"; do stop_pid "$pid"; done
    [ -n "$NATS_PID" ] && stop_pid "$NATS_PID"
    if [ "$OK" = 1 ]; then
        rm -rf "$WORK"
    else
        [ "$rc" = 0 ] && rc=1
        show_logs
        echo "demo: FAILED; files kept in $WORK" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls "$@" every 0.1 s until it succeeds or $1 seconds pass.
wait_for() {
    local timeout="$1" what="$2"; shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo: timed out after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# --- nats-server ---------------------------------------------------------------------------
PORT="$(free_port)"
MON="$(free_port)"
say "starting nats-server on 127.0.0.1:$PORT (JetStream store in $WORK/nats)"
"$NATS_SERVER" -a 127.0.0.1 -p "$PORT" -m "$MON" -js -sd "$WORK/nats" >"$WORK/nats-server.log" 2>&1 &
NATS_PID=$!
jsz_up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MON/jsz', timeout=1)"; }
wait_for "$READY_TIMEOUT" "nats-server JetStream" jsz_up

# --- the app's databases and the node configs ----------------------------------------------
SCHEMA="CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, by_node TEXT)"
for n in 1 2 3; do
    python3 "$APP" "$WORK/node$n.db" "$SCHEMA"
    cat >"$WORK/node$n.toml" <<EOF
db_path = "$WORK/node$n.db"
node_id = $n
polling_interval = 50

[nats]
urls = ["nats://127.0.0.1:$PORT"]
EOF
done

# --- the nodes -----------------------------------------------------------------------------
say "starting 3 nodes (logs: $WORK/nodeN.log)"
for n in 1 2 3; do
    "$BIN" --config "$WORK/node$n.toml" >"$WORK/node$n.log" 2>&1 &
    NODE_PIDS+=($!)
done
node_ready() { grep -q "node ready" "$WORK/node$1.log"; }
for n in 1 2 3; do
    wait_for "$READY_TIMEOUT" "node$n to log 'node ready'" node_ready "$n"
done

# --- the app writes; the nodes converge ----------------------------------------------------
# Prints each node's table; exits 0 when the three are identical.
COMPARE='
import sqlite3, sys
dumps = []
for db in sys.argv[2:]:
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    dumps.append(c.execute("SELECT id, typeof(body), body, by_node FROM notes ORDER BY id").fetchall())
    c.close()
if sys.argv[1] == "show":
    for db, rows in zip(sys.argv[2:], dumps):
        name = db.rsplit("/", 1)[-1]
        print("  %s: %s" % (name, ", ".join("%d=%r(%s)" % (r[0], r[2], r[3]) for r in rows) or "(empty)"))
sys.exit(0 if all(d == dumps[0] for d in dumps) else 1)
'
DBS=("$WORK/node1.db" "$WORK/node2.db" "$WORK/node3.db")
converged() { python3 -c "$COMPARE" check "${DBS[@]}"; }
step() {
    local what="$1" db="$2" sql="$3"
    say "$what"
    python3 "$APP" "$db" "$sql"
    wait_for "$STEP_TIMEOUT" "the three databases to be identical after: $what" converged
    python3 -c "$COMPARE" show "${DBS[@]}"
}

step "app inserts 3 rows on node1" "$WORK/node1.db" \
    "INSERT INTO notes VALUES (1, 'hello', 'node1'), (2, 'bonjour', 'node1'), (3, 'hallo', 'node1')"
step "app updates row 2 on node2" "$WORK/node2.db" \
    "UPDATE notes SET body = 'bonjour, le monde', by_node = 'node2' WHERE id = 2"
step "app deletes row 1 on node3" "$WORK/node3.db" \
    "DELETE FROM notes WHERE id = 1"
# A non-empty, identical result is what the demo promises.
python3 -c "$COMPARE" check "${DBS[@]}"
test "$(python3 "$APP" "$WORK/node1.db" --query 'SELECT count(*) FROM notes')" = "[2]"

say "replicated: all three nodes hold the same rows"
say "fleet status, asked through NATS (harmonylite status --fleet)"
"$BIN" status --config "$WORK/node1.toml" --fleet
if [ "$KEEP" = 1 ]; then
    echo "running: nats://127.0.0.1:$PORT, DBs in $WORK; write with:"
    echo "  python3 tests/app.py $WORK/node1.db \"INSERT INTO notes VALUES (10, 'mine', 'me')\""
    echo "Ctrl-C stops everything."
    OK=1
    trap 'exit 0' INT TERM
    wait -n || true
    OK=0
    echo "demo: a node exited" >&2
    exit 1
fi
say "stopping"
for pid in "${NODE_PIDS[@]}"; do
    kill -TERM "$pid"
done
for i in "${!NODE_PIDS[@]}"; do
    pid="${NODE_PIDS[$i]}"
    # A node must exit 0 on SIGTERM within 10 s.
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "demo: node$((i + 1)) did not exit within 10 s of SIGTERM" >&2
        exit 1
    fi
    rc=0; wait "$pid" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "demo: node$((i + 1)) exited with $rc after SIGTERM" >&2
        exit 1
    fi
done
NODE_PIDS=()
OK=1
say "done"
