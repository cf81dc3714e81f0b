from __future__ import annotations

from django.db import models


class FlashSale(models.Model):
    """A SKU on flash sale: checkouts for it are admitted by the Redis gate and queued. The
    database reservation stays the truth; the gate only keeps the crowd off the database."""

    sku = models.OneToOneField("catalog.Sku", on_delete=models.PROTECT, related_name="+")
    # The per-buyer limit is the SKU's own (Sku.per_user_limit): one value, which the order
    # placement and the gate both read.
    units = models.PositiveIntegerField(help_text="Units put on sale when it started.")
    active = models.BooleanField(default=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        # The table it had in the inventory app: moving the model moved no data.
        db_table = "inventory_flashsale"
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"flash sale of SKU {self.sku_id} ({'active' if self.active else 'ended'})"
