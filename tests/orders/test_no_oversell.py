"""300 concurrent checkouts from many buyers for 50 units: exactly 50 orders."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import connections

from apps.inventory.models import Stock
from apps.orders.models import Order
from shop.sharding import order_shard_aliases
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import api_client, assert_invariants_hold, post_order

ATTEMPTS = 300
UNITS = 50


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_three_hundred_concurrent_checkouts_for_fifty_units_make_fifty_orders():
    # Given 50 units and 300 buyers
    sku = product_with_skus(stock=UNITS).skus.get()
    password = make_password("x")
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"crowd{i}", password=password) for i in range(ATTEMPTS)]
    )
    clients = [api_client(user) for user in users]

    def attempt(client):
        try:
            response = post_order(client, [{"sku": sku.code, "quantity": 1}])
            return response.status_code, response.json().get("code")
        finally:
            connections.close_all()

    # When they all check out at once
    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(attempt, clients))

    # Then exactly 50 got an order, the rest a clean "sold out", and stock adds up
    created = [o for o in outcomes if o[0] == 201]
    assert len(created) == UNITS
    assert sorted(set(outcomes) - {(201, None)}) == [(409, "out_of_stock")]
    orders = sum(Order.objects.using(alias).count() for alias in order_shard_aliases())
    assert orders == UNITS
    stock = Stock.objects.get(sku=sku)
    assert (stock.available, stock.reserved, stock.sold) == (0, UNITS, 0)
    assert_invariants_hold()
