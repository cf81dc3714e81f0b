"""Orders live in exactly the database their id names; a query that names no shard raises."""

from __future__ import annotations

import pytest
from django.db import connections

from apps.inventory.models import Stock
from apps.orders import services
from apps.orders.models import Order, OrderLine
from shop.sharding import order_shard_aliases, shard_for_id, shard_for_user
from shop.sharding.router import ShardNotResolved
from tests.factories.users import UserFactory

ALL = "__all__"


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL)
def test_each_order_is_in_exactly_the_database_its_id_names(sku):
    # Given orders from buyers spread over the shards
    Stock.objects.filter(sku=sku).update(received=100, available=100)
    orders = []
    for i in range(12):
        buyer = UserFactory(username=f"r{i}")
        orders.append(
            (
                buyer,
                services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}]),
            )
        )
    assert {shard_for_id(order.id) for _, order in orders} == set(order_shard_aliases())

    # Then asking every database directly finds each order in one place: the one its id names
    for buyer, order in orders:
        holders = []
        for alias in ["default", *order_shard_aliases()]:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT to_regclass('orders_order') IS NOT NULL")
                if not cursor.fetchone()[0]:
                    continue
                cursor.execute("SELECT user_id FROM orders_order WHERE id = %s", [order.id])
                if cursor.fetchone() is not None:
                    holders.append(alias)
        assert holders == [shard_for_id(order.id)] == [shard_for_user(buyer.id)]


@pytest.mark.django_db(databases=ALL)
def test_queries_that_name_no_shard_raise():
    with pytest.raises(ShardNotResolved):
        list(Order.objects.all())
    with pytest.raises(ShardNotResolved):
        Order.objects.count()
    with pytest.raises(ShardNotResolved):
        OrderLine.objects.filter(sku_id=1).exists()
    with pytest.raises(ShardNotResolved):
        Order(id=1, user_id=1, currency="EUR", total=0, expires_at="2030-01-01T00:00Z").save()
