from __future__ import annotations

from django.db import transaction
from django.db.models import F

from apps.inventory.exceptions import InvalidQuantity
from apps.inventory.models import Stock


@transaction.atomic(using="default")
def stock_receive(*, sku_id: int, quantity: int) -> None:
    """Put ``quantity`` more units of a SKU on sale (goods received)."""
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity <= 0:
        raise InvalidQuantity(extra={"quantity": quantity})
    Stock.objects.get_or_create(sku_id=sku_id)
    Stock.objects.filter(sku_id=sku_id).update(
        received=F("received") + quantity, available=F("available") + quantity
    )


@transaction.atomic(using="default")
def stock_receive_many(*, quantities: dict[int, int]) -> None:
    """Receive units for many SKUs at once (imports, seeding). A quantity of 0 only makes sure
    the SKU has a stock row. Negative or non-integer quantities raise and write nothing."""
    for quantity in quantities.values():
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
            raise InvalidQuantity(extra={"quantity": quantity})
    existing = set(Stock.objects.filter(sku_id__in=quantities).values_list("sku_id", flat=True))
    Stock.objects.bulk_create(
        [
            Stock(sku_id=sku_id, received=quantity, available=quantity)
            for sku_id, quantity in quantities.items()
            if sku_id not in existing
        ],
        batch_size=1000,
    )
    for sku_id in existing:
        if quantities[sku_id]:
            Stock.objects.filter(sku_id=sku_id).update(
                received=F("received") + quantities[sku_id],
                available=F("available") + quantities[sku_id],
            )
