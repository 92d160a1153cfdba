#!/usr/bin/env python3
"""The ledger's writer: ORM writes on the rows whose ids start with PREFIX until the file STOP
exists, then writes what it committed to OUT (JSON: table -> id -> column -> value).

    LEDGER_VERSION=1|2 writer.py DB PREFIX STOP OUT [STATE]

STATE (a previous writer's OUT) is where it starts from: the rows it committed. It creates,
updates and deletes accounts (a delete cascades to their entries in the database) and entries,
one short transaction each, and records a change only once its commit returned. SQLAlchemy and
Alembic come from PYTHONPATH.
"""
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sqlalchemy import delete, update  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from ledger.models import VERSION, Account, Entry, engine  # noqa: E402

CURRENCIES = ["EUR", "USD", "GBP", "CHF"]


def main(argv):
    db, prefix, stop, out = argv[1:5]
    state = {"account": {}, "entry": {}}
    if len(argv) > 5:
        with open(argv[5]) as f:
            state = json.load(f)
    accounts, entries = state["account"], state["entry"]
    if VERSION >= 2:
        # the columns this release added, as the migrations left them
        for a in accounts.values():
            a.setdefault("note", None)
        for e in entries.values():
            e.setdefault("currency", "EUR")
    rng = random.Random(f"{prefix}-{VERSION}")
    e = engine(db)
    # ids and emails go on from the highest number either release used
    n = max([int(k.rsplit("-", 1)[1]) for k in list(accounts) + list(entries)], default=0)
    while not os.path.exists(stop):
        n += 1
        r = rng.random()
        with Session(e) as s, s.begin():
            if r < 0.3 or not accounts:
                a = {"email": f"{prefix}-{n}@example.org", "name": f"account {n}"}
                if VERSION >= 2:
                    a["note"] = rng.choice([None, f"note {n}"])
                key = f"{prefix}-a-{n}"
                s.add(Account(id=key, **a))
                done = lambda: accounts.__setitem__(key, a)  # noqa: E731
            elif r < 0.6:
                x = {"account_id": rng.choice(sorted(accounts)), "amount": rng.randint(-1000, 1000)}
                if VERSION >= 2:
                    x["currency"] = rng.choice(CURRENCIES)
                key = f"{prefix}-e-{n}"
                s.add(Entry(id=key, **x))
                done = lambda: entries.__setitem__(key, x)  # noqa: E731
            elif r < 0.75:
                key = rng.choice(sorted(accounts))
                a = dict(accounts[key], name=f"renamed {n}")
                if rng.random() < 0.3:
                    a["email"] = f"{prefix}-{n}@example.org"
                if VERSION >= 2:
                    a["note"] = f"updated {n}"
                s.execute(update(Account).where(Account.id == key).values(**a))
                done = lambda: accounts.__setitem__(key, a)  # noqa: E731
            elif r < 0.9 and entries:
                key = rng.choice(sorted(entries))
                x = dict(entries[key], amount=rng.randint(-1000, 1000))
                if VERSION >= 2:
                    x["currency"] = rng.choice(CURRENCIES)
                s.execute(update(Entry).where(Entry.id == key).values(**x))
                done = lambda: entries.__setitem__(key, x)  # noqa: E731
            elif r < 0.95 and entries:
                key = rng.choice(sorted(entries))
                s.execute(delete(Entry).where(Entry.id == key))
                done = lambda: entries.pop(key)  # noqa: E731
            else:
                key = rng.choice(sorted(accounts))
                # the database cascades to the account's entries (ON DELETE CASCADE)
                s.execute(delete(Account).where(Account.id == key))

                def done():
                    accounts.pop(key)
                    for k in [k for k, x in entries.items() if x["account_id"] == key]:
                        del entries[k]

        done()
        time.sleep(rng.uniform(0.002, 0.02))
    with open(out + ".tmp", "w") as f:
        json.dump({"version": VERSION, "account": accounts, "entry": entries}, f, sort_keys=True)
    os.replace(out + ".tmp", out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
