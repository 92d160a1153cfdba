"""The shop's one model. SHOP_VERSION=1 is the release before migration 0002 (no qty)."""
import os

from django.db import models


class Item(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    if os.environ.get("SHOP_VERSION", "2") == "2":
        qty = models.IntegerField(default=1)

    class Meta:
        app_label = "shop"
