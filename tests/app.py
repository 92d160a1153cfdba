#!/usr/bin/env python3
"""The "application" of the integration tests and the demo: an unmodified SQLite user.

    python3 tests/app.py DB_PATH 'SQL; SQL; ...'      run a script (executescript)
    python3 tests/app.py DB_PATH --query 'SELECT ...'  print each row as a JSON list, one a line

It sets no PRAGMA and loads no extension: HarmonyLite must work with the app as it is.
A script that fails with "database is locked" (the sidecar holds the write lock) is retried as
a whole, up to 50 times; any other error exits 1 with the message on stderr.
"""
import base64
import json
import sqlite3
import sys
import time

ATTEMPTS = 50


def connect(db):
    return sqlite3.connect(db, timeout=30, isolation_level=None)


def run_script(db, sql):
    for attempt in range(1, ATTEMPTS + 1):
        conn = connect(db)
        try:
            conn.executescript(sql)
            return
        except sqlite3.OperationalError as e:
            if "database is locked" not in str(e) or attempt == ATTEMPTS:
                raise
            # executescript may have left a transaction open: roll it back before retrying.
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            time.sleep(min(0.02 * attempt, 0.5))
        finally:
            conn.close()


def to_json(v):
    if isinstance(v, bytes):
        return {"blob": base64.b64encode(v).decode()}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return {"real": repr(v)}
    return v


def query(db, sql):
    for attempt in range(1, ATTEMPTS + 1):
        conn = connect(db)
        try:
            rows = conn.execute(sql).fetchall()
            break
        except sqlite3.OperationalError as e:
            if "database is locked" not in str(e) or attempt == ATTEMPTS:
                raise
            time.sleep(min(0.02 * attempt, 0.5))
        finally:
            conn.close()
    for row in rows:
        print(json.dumps([to_json(v) for v in row], ensure_ascii=False))


def main(argv):
    if len(argv) == 4 and argv[2] == "--query":
        fn, db, sql = query, argv[1], argv[3]
    elif len(argv) == 3:
        fn, db, sql = run_script, argv[1], argv[2]
    else:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        fn(db, sql)
    except sqlite3.Error as e:
        print(f"app.py: {db}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
