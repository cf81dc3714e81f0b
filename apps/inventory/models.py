from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class Stock(models.Model):
    """Units of one SKU. ``received = available + reserved + sold`` always (DESIGN.md §4.1),
    and none of them is negative: the database enforces both, not only this code."""

    sku = models.OneToOneField(
        "catalog.Sku", on_delete=models.PROTECT, related_name="+", primary_key=True
    )
    received = models.BigIntegerField(default=0, help_text="Every unit ever put on sale.")
    available = models.BigIntegerField(default=0)
    reserved = models.BigIntegerField(default=0, help_text="Held by unpaid orders.")
    sold = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(available__gte=0), name="inventory_stock_available_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(reserved__gte=0), name="inventory_stock_reserved_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(sold__gte=0), name="inventory_stock_sold_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(received=F("available") + F("reserved") + F("sold")),
                name="inventory_stock_units_add_up",
            ),
        ]

    def __str__(self) -> str:
        return f"stock of SKU {self.sku_id}: {self.available} available"
