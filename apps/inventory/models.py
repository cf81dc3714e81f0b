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


class Reservation(models.Model):
    """Units of one SKU held for one order until it is paid (committed) or not (released)."""

    class Status(models.TextChoices):
        HELD = "held"
        RELEASED = "released"
        COMMITTED = "committed"

    order_id = models.BigIntegerField(db_index=True)
    user_id = models.BigIntegerField()
    sku = models.ForeignKey("catalog.Sku", on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.HELD)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order_id", "sku"], name="inventory_one_line_per_sku"),
            models.CheckConstraint(
                condition=Q(quantity__gt=0), name="inventory_reservation_quantity_positive"
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                name="inventory_held_by_expiry",
                condition=Q(status="held"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × SKU {self.sku_id} for order {self.order_id} ({self.status})"
