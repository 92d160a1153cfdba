#!/usr/bin/env python3
"""A small Django 5.2 application for tests/migrations.rs, run unmodified beside a node.

    run.py DB migrate [MIGRATION]          manage.py migrate shop [MIGRATION]
    run.py DB applied                      print the shop migrations recorded as applied
    run.py DB write BASE STOP OUT          ORM writes on ids BASE+1..BASE+9999 of Item and Order
                                           until the file STOP exists, then write the rows it
                                           committed to OUT (see write)

SHOP_VERSION=1 runs the release before migration 0002. Django comes from PYTHONPATH
(scripts/tools.sh installs it into .tools/django).
"""
import json
import os
import random
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import django  # noqa: E402
from django.conf import settings  # noqa: E402


def setup(db):
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db, "OPTIONS": {"timeout": 30}}},
        INSTALLED_APPS=["shop"],
        USE_TZ=True,
    )
    django.setup()


def q(v):
    """One value as tests/common/sql.rs renders it (SQLite storage class and quote() form)."""
    if v is None:
        return "null=NULL"
    if isinstance(v, (bool, int)):
        return f"integer={int(v)}"
    if isinstance(v, str):
        return "text='" + v.replace("'", "''") + "'"
    raise TypeError(repr(v))


def write(base, stop, out):
    """ORM writes in the id block base+1..base+9999 of both models until the file `stop` exists;
    then OUT gets {"items": {id: row}, "orders": {id: row}}: every row of the block as the
    writer last committed it, rendered as tests/common/sql.rs does (items: id|name[|qty],
    orders: id|item_id|code|data|paid|updated, the values Django sent to SQLite)."""
    from django.db import connection, transaction

    from shop.models import V2, Item, Order

    rng = random.Random(base)
    tag = f"{base}-v{2 if V2 else 1}"  # order codes: unique per node, release and counter
    lo, hi = base, base + 10000
    data_f, updated_f = Order._meta.get_field("data"), Order._meta.get_field("updated")
    items, orders = {}, {}  # id -> (name, qty) / id -> Order as committed
    rows = {"items": {}, "orders": {}}

    def item_row(i):
        name, qty = items[i]
        rows["items"][i] = "|".join([q(i), q(name)] + ([q(qty)] if V2 else []))

    def order_row(o):
        # what Django sent: JSON text by the field's encoder, the UTC timestamp auto_now set
        d = data_f.get_db_prep_value(o.data, connection)
        u = updated_f.get_db_prep_value(o.updated, connection)
        rows["orders"][o.id] = "|".join([q(o.id), q(o.item_id), q(o.code), q(d), q(o.paid), q(u)])

    # the block as this node holds it (the previous release's writer committed it), read as
    # stored (Django's cursor would convert the datetime and bool columns)
    raw = sqlite3.connect(connection.settings_dict["NAME"])
    for r in raw.execute(f"SELECT id, name{', qty' if V2 else ''} FROM shop_item WHERE id > ? AND id < ?", (lo, hi)):
        items[r[0]] = (r[1], r[2] if V2 else None)
        rows["items"][r[0]] = "|".join(q(v) for v in r)
    for r in raw.execute("SELECT id, item_id, code, data, paid, updated FROM shop_order WHERE id > ? AND id < ?", (lo, hi)):
        rows["orders"][r[0]] = "|".join(q(v) for v in r)
    raw.close()
    for o in Order.objects.filter(id__gt=lo, id__lt=hi):
        orders[o.id] = o
    next_item = max(items, default=base) + 1
    next_order = max(orders, default=base) + 1
    n = 0

    def new_order(item_id, code=None):
        nonlocal next_order
        data = {
            "note": "crème brûlée, 日本, ☕ 'n' \"q\"",
            "n": n,
            "lines": [{"sku": f"s{item_id}", "qty": rng.randint(1, 5), "price": rng.randint(1, 999) / 4}],
            "gift": rng.random() < 0.5,
            "ref": None,
        }
        o = Order.objects.create(id=next_order, item_id=item_id, code=code or f"{tag}-o{next_order}-ü", data=data)
        next_order += 1
        orders[o.id] = o
        order_row(o)
        return o

    def forget_order(oid):
        del orders[oid]
        del rows["orders"][oid]

    while not os.path.exists(stop):
        n += 1
        r = rng.random()
        mine = list(orders.values())
        if r < 0.2 or not items:
            # an item and up to two orders in one transaction
            name = f"Käse n{next_item}-{n}"
            qty = rng.randint(1, 9)
            with transaction.atomic():
                Item.objects.create(id=next_item, name=name, **({"qty": qty} if V2 else {}))
                items[next_item] = (name, qty if V2 else None)
                item_row(next_item)
                for _ in range(rng.randint(0, 2)):
                    new_order(next_item)
            next_item += 1
        elif r < 0.4:
            i = rng.choice(list(items))
            name = f"Käse u{i}-{n}"
            qty = rng.randint(1, 9) if V2 else None
            Item.objects.filter(id=i).update(name=name, **({"qty": qty} if V2 else {}))
            items[i] = (name, qty if V2 else items[i][1])
            item_row(i)
        elif r < 0.45:
            # the collector deletes the item's orders first, in the same transaction
            i = rng.choice(list(items))
            Item.objects.filter(id=i).delete()
            del items[i]
            del rows["items"][i]
            for oid in [oid for oid, o in orders.items() if o.item_id == i]:
                forget_order(oid)
        elif r < 0.65 or not mine:
            new_order(rng.choice(list(items)))
        elif r < 0.9:
            o = rng.choice(mine)
            o.paid = not o.paid
            o.data = dict(o.data, n=n, paid_at=None if not o.paid else f"t{n}")
            if rng.random() < 0.2:
                o.code = f"{tag}-c{n}-ü"
            o.save()  # auto_now sets updated
            order_row(o)
        elif r < 0.95:
            o = rng.choice(mine)
            forget_order(o.id)
            o.delete()
        else:
            # the order is replaced: a new row takes over the old one's code, in one transaction
            o = rng.choice(mine)
            with transaction.atomic():
                forget_order(o.id)
                o.delete()
                new_order(rng.choice(list(items)), code=o.code)
        time.sleep(rng.uniform(0.002, 0.02))
    with open(out + ".tmp", "w") as f:
        json.dump({k: {str(i): v for i, v in sorted(m.items())} for k, m in rows.items()}, f, ensure_ascii=False)
    os.replace(out + ".tmp", out)


def main(argv):
    db, cmd = argv[1], argv[2]
    setup(db)
    if cmd == "migrate":
        from django.core.management import call_command

        call_command("migrate", "shop", *argv[3:4], verbosity=0)
    elif cmd == "applied":
        from django.db.migrations.recorder import MigrationRecorder

        from django.db import connection

        for name in sorted(MigrationRecorder(connection).applied_migrations()):
            print(".".join(name))
    elif cmd == "write":
        write(int(argv[3]), argv[4], argv[5])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
