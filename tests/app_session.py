#!/usr/bin/env python3
"""A long-lived "application" for the fault and chaos tests: the same unmodified SQLite user as
tests/app.py (plain sqlite3 module, no PRAGMA, whole-script retry on "database is locked"),
without a process start per transaction.

    python3 tests/app_session.py DB_PATH

Reads one JSON string per line on stdin, runs it as a script (executescript, so one
transaction when it says BEGIN ... COMMIT) and answers one line: "ok", or "err MESSAGE".
Exits at end of input.
"""
import json
import os
import sqlite3
import sys

sys.dont_write_bytecode = True  # no __pycache__ in tests/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from app import run_script  # noqa: E402


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    db = argv[1]
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            run_script(db, json.loads(line))
            answer = "ok"
        except (sqlite3.Error, ValueError) as e:
            answer = "err " + f"{type(e).__name__}: {e}".replace("\n", " ")
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
