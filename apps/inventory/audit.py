"""Invariant 1 (no oversell) as seen from the stock rows."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import F, Q, Sum

from apps.inventory.models import Reservation, Stock


def stock_violations() -> Iterator[str]:
    broken = Stock.objects.filter(
        Q(available__lt=0)
        | Q(reserved__lt=0)
        | Q(sold__lt=0)
        | ~Q(received=F("available") + F("reserved") + F("sold"))
    )
    for stock in broken.iterator(chunk_size=2000):
        yield (
            f"stock of SKU {stock.sku_id}: received {stock.received} != available "
            f"{stock.available} + reserved {stock.reserved} + sold {stock.sold} (or negative)"
        )
    held = dict(
        Reservation.objects.filter(status=Reservation.Status.HELD)
        .values("sku_id")
        .annotate(units=Sum("quantity"))
        .values_list("sku_id", "units")
    )
    committed = dict(
        Reservation.objects.filter(status=Reservation.Status.COMMITTED)
        .values("sku_id")
        .annotate(units=Sum("quantity"))
        .values_list("sku_id", "units")
    )
    for sku_id, reserved, sold in Stock.objects.values_list("sku_id", "reserved", "sold").iterator(
        chunk_size=5000
    ):
        expected_reserved, expected_sold = held.get(sku_id, 0), committed.get(sku_id, 0)
        if reserved != expected_reserved:
            yield f"SKU {sku_id}: reserved {reserved} but held reservations: {expected_reserved}"
        if sold != expected_sold:
            yield f"SKU {sku_id}: sold {sold} but committed reservations: {expected_sold}"
