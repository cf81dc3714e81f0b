"""The database itself refuses stock counts that break DESIGN.md §4.1."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.inventory.exceptions import InvalidQuantity
from apps.inventory.models import Stock
from apps.inventory.services import stock_receive, stock_receive_many
from tests.factories.catalog import SkuFactory, StockFactory


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change",
    [
        {"available": F("available") - 11},  # more than there is
        {"available": F("available") - 1},  # units vanish: the sum no longer adds up
        {"sold": F("sold") + 1},  # units appear from nowhere
        {"reserved": -1, "received": F("received") - 1},
    ],
)
def test_bad_counts_are_refused_by_a_check_constraint(change):
    stock = StockFactory(available=10)
    with pytest.raises(IntegrityError), transaction.atomic():
        Stock.objects.filter(pk=stock.pk).update(**change)
    stock.refresh_from_db()
    assert (stock.received, stock.available, stock.reserved, stock.sold) == (10, 10, 0, 0)


@pytest.mark.django_db
def test_receiving_adds_to_received_and_available():
    sku = SkuFactory()
    stock_receive(sku_id=sku.id, quantity=5)
    stock_receive(sku_id=sku.id, quantity=3)
    stock = Stock.objects.get(sku=sku)
    assert (stock.received, stock.available) == (8, 8)


@pytest.mark.django_db
@pytest.mark.parametrize("quantity", [0, -3, 2.5, "4", True])
def test_receiving_a_bad_quantity_writes_nothing(quantity):
    sku = SkuFactory()
    with pytest.raises(InvalidQuantity):
        stock_receive(sku_id=sku.id, quantity=quantity)
    if quantity != 0:  # receiving 0 in bulk only makes sure a stock row exists
        with pytest.raises(InvalidQuantity):
            stock_receive_many(quantities={sku.id: 1, SkuFactory().id: quantity})
    assert not Stock.objects.exists()
