#!/usr/bin/env python3
"""A small Django 5.2 application for tests/migrations.rs, run unmodified beside a node.

    run.py DB migrate [MIGRATION]          manage.py migrate shop [MIGRATION]
    run.py DB applied                      print the shop migrations recorded as applied
    run.py DB write BASE STOP OUT          ORM writes on ids BASE..BASE+9999 until the file STOP
                                           exists, then write {id: name} of what it committed to OUT

SHOP_VERSION=1 runs the release before migration 0002. Django comes from PYTHONPATH
(scripts/tools.sh installs it into .tools/django).
"""
import json
import os
import random
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


def write(base, stop, out):
    from shop.models import Item

    rng = random.Random(base)
    have = {i.id: i.name for i in Item.objects.filter(id__gte=base, id__lt=base + 10000)}
    next_id = max(have, default=base) + 1
    n = 0
    while not os.path.exists(stop):
        n += 1
        r = rng.random()
        if r < 0.4 or not have:
            name = f"n{next_id}-{n}"
            Item.objects.create(id=next_id, name=name)
            have[next_id] = name
            next_id += 1
        elif r < 0.9:
            i = rng.choice(list(have))
            name = f"u{i}-{n}"
            Item.objects.filter(id=i).update(name=name)
            have[i] = name
        else:
            i = rng.choice(list(have))
            Item.objects.filter(id=i).delete()
            del have[i]
        time.sleep(rng.uniform(0.002, 0.02))
    with open(out + ".tmp", "w") as f:
        json.dump({str(k): v for k, v in sorted(have.items())}, f)
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
