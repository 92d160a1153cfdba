"""The shop's models. SHOP_VERSION=1 is the release before migration 0002 (no Item.qty,
Order.code at max_length 50)."""
import os

from django.db import models

V2 = os.environ.get("SHOP_VERSION", "2") == "2"


class Item(models.Model):
    id = models.IntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    if V2:
        qty = models.IntegerField(default=1)

    class Meta:
        app_label = "shop"


class Order(models.Model):
    id = models.IntegerField(primary_key=True)
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="orders")
    code = models.CharField(max_length=80 if V2 else 50, unique=True)
    data = models.JSONField()
    paid = models.BooleanField(default=False)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "shop"
