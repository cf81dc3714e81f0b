"""A reservation is held once per order, however often it is asked for."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.inventory.models import Reservation, Stock
from apps.inventory.services import stock_reserve
from tests.factories.catalog import StockFactory


@pytest.mark.django_db
def test_a_repeated_reservation_for_the_same_order_holds_nothing_more():
    stock = StockFactory(available=10)
    expires = timezone.now() + timedelta(minutes=15)
    first = stock_reserve(order_id=42, user_id=7, items=[(stock.sku_id, 3)], expires_at=expires)
    again = stock_reserve(order_id=42, user_id=7, items=[(stock.sku_id, 3)], expires_at=expires)
    assert [r.id for r in again] == [r.id for r in first]
    assert Reservation.objects.filter(order_id=42).count() == 1
    stock = Stock.objects.get(pk=stock.pk)
    assert (stock.available, stock.reserved) == (7, 3)
