from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    # On SQLite each operation is a table rebuild (new__shop_item / new__shop_order, copy, drop,
    # rename) with foreign keys off, then PRAGMA foreign_key_check. AddField: qty is NOT NULL
    # without a SQL default (the default stays in Python; the copy writes 1). AlterField: the
    # declared type becomes varchar(80), the same affinity.
    operations = [
        migrations.AddField(model_name="item", name="qty", field=models.IntegerField(default=1)),
        migrations.AlterField(model_name="order", name="code", field=models.CharField(max_length=80, unique=True)),
    ]
