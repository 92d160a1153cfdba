from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("shop", "0001_initial")]
    # On SQLite: a table rebuild (new__shop_item, copy with qty = 1, drop, rename); the default
    # stays in Python, the column is NOT NULL without a SQL default.
    operations = [migrations.AddField(model_name="item", name="qty", field=models.IntegerField(default=1))]
