"""Checkout: validate, snapshot, reserve, write on the buyer's shard — or undo everything."""

from __future__ import annotations

import pytest
from django.db import connections

from apps.catalog.models import Sku
from apps.catalog.services import sku_price_set
from apps.inventory.exceptions import OutOfStock
from apps.inventory.models import Reservation, Stock
from apps.orders import services
from apps.orders.exceptions import CheckoutInvalid, PurchaseLimitExceeded
from apps.orders.models import Order, OrderEvent
from shop.models import OutboxMessage
from shop.sharding import all_database_aliases, order_shard_aliases, shard_for_id, shard_for_user
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"


def _orders_everywhere() -> int:
    return sum(Order.objects.using(alias).count() for alias in order_shard_aliases())


def _stock(sku: Sku) -> tuple[int, int, int]:
    stock = Stock.objects.get(sku=sku)
    return stock.available, stock.reserved, stock.sold


@pytest.mark.django_db(databases=ALL)
def test_an_order_is_written_on_the_buyers_shard_with_a_snapshot(buyer, sku):
    order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 3}])

    alias = shard_for_user(buyer.id)
    assert shard_for_id(order.id) == alias
    stored = Order.objects.using(alias).get(id=order.id)
    assert stored.status == "pending_payment"
    assert stored.total == 3000
    assert stored.expires_at > stored.created_at
    line = stored.lines.get()
    assert (line.sku_code, line.unit_price, line.quantity, line.line_total) == (
        sku.code,
        1000,
        3,
        3000,
    )
    assert line.name.startswith(sku.product.name)
    assert _stock(sku) == (7, 3, 0)
    assert Reservation.objects.get(order_id=order.id).status == "held"
    assert OrderEvent.objects.using(alias).get(order=stored).kind == "created"
    assert OutboxMessage.objects.using(alias).get().task == services.PLACED_NOTIFY_TASK
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_price_paid_is_the_price_at_checkout(buyer, sku, django_capture_on_commit_callbacks):
    order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    with django_capture_on_commit_callbacks(execute=True):
        sku_price_set(sku=sku, price=99_999)
    assert order.lines.get().unit_price == 1000


@pytest.mark.django_db(databases=ALL)
def test_duplicate_skus_in_one_request_become_one_line(buyer, sku):
    order = services.order_place(
        user_id=buyer.id,
        items=[{"sku": sku.code, "quantity": 1}, {"sku": sku.code, "quantity": 2}],
    )
    assert order.lines.get().quantity == 3


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "items",
    [
        [],
        [{"sku": "NO-SUCH-SKU", "quantity": 1}],
        [{"sku": "SKU", "quantity": 11}],
        [{"sku": "INACTIVE", "quantity": 1}],
        [{"sku": "SKU", "quantity": 1}, {"sku": "DOLLARS", "quantity": 1}],
    ],
)
def test_invalid_checkouts_write_nothing(buyer, items):
    product = product_with_skus(skus=1)
    product.skus.update(code="SKU")
    product_with_skus(skus=1).skus.update(code="INACTIVE", is_active=False)
    product_with_skus(skus=1).skus.update(code="DOLLARS", currency="USD")

    with pytest.raises(CheckoutInvalid):
        services.order_place(user_id=buyer.id, items=items)

    assert _orders_everywhere() == 0
    assert not Reservation.objects.exists()
    assert set(Stock.objects.values_list("reserved", flat=True)) == {0}


@pytest.mark.django_db(databases=ALL)
def test_out_of_stock_reserves_nothing_of_any_line(buyer):
    plenty = product_with_skus(stock=10).skus.get()
    scarce = product_with_skus(stock=1).skus.get()
    with pytest.raises(OutOfStock):
        services.order_place(
            user_id=buyer.id,
            items=[{"sku": plenty.code, "quantity": 2}, {"sku": scarce.code, "quantity": 2}],
        )
    assert _stock(plenty) == (10, 0, 0)
    assert _stock(scarce) == (1, 0, 0)
    assert _orders_everywhere() == 0


@pytest.mark.django_db(databases=ALL)
def test_per_user_limit_counts_open_and_paid_orders(buyer, sku):
    Sku.objects.filter(id=sku.id).update(per_user_limit=3)
    first = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 2}])
    with pytest.raises(PurchaseLimitExceeded):
        services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 2}])
    services.order_cancel(order_id=first.id, actor="test")  # cancelled units no longer count
    services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 3}])
    assert _stock(sku) == (7, 3, 0)


@pytest.mark.django_db(databases=ALL)
def test_a_failed_order_write_releases_the_reservation(buyer, sku):
    # Given an order write that fails after the stock was reserved
    def fail(order):
        raise RuntimeError("the shard write broke")

    # When checking out
    with pytest.raises(RuntimeError):
        services.order_place(
            user_id=buyer.id, items=[{"sku": sku.code, "quantity": 4}], also_write=fail
        )

    # Then nothing is half done: no order, and the units are available again
    assert _orders_everywhere() == 0
    assert _stock(sku) == (10, 0, 0)
    assert set(Reservation.objects.values_list("status", flat=True)) == {"released"}
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_database_refusing_the_order_insert_leaves_no_reservation(buyer, sku):
    # Given the buyer's shard refusing order inserts (a trigger, i.e. a real database error)
    alias = shard_for_user(buyer.id)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_orders() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_orders BEFORE INSERT ON orders_order "
            "FOR EACH ROW EXECUTE FUNCTION refuse_orders()"
        )
    try:
        with pytest.raises(Exception, match="injected failure"):
            services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 4}])
    finally:
        with connections[alias].cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_orders ON orders_order")
            cursor.execute("DROP FUNCTION refuse_orders()")

    assert _orders_everywhere() == 0
    assert _stock(sku) == (10, 0, 0)
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_buyers_on_a_dead_shard_get_503_and_others_are_unaffected(sku):
    from tests.factories.users import UserFactory
    from tests.orders.conftest import api_client, post_order

    # Given one buyer on each shard, and the first shard's server gone
    users = [UserFactory(username=f"u{i}") for i in range(40)]
    by_shard = {}
    for user in users:
        by_shard.setdefault(shard_for_user(user.id), user)
    dead_alias, live_alias = order_shard_aliases()[0], order_shard_aliases()[1]
    dead = connections[dead_alias]
    port = dead.settings_dict["PORT"]
    dead.close()
    dead.settings_dict["PORT"] = 1
    try:
        refused = post_order(api_client(by_shard[dead_alias]), [{"sku": sku.code, "quantity": 1}])
        accepted = post_order(api_client(by_shard[live_alias]), [{"sku": sku.code, "quantity": 1}])
    finally:
        dead.close()
        dead.settings_dict["PORT"] = port

    # Then the dead shard's buyer is told to retry later and nothing was held for them
    assert refused.status_code == 503
    assert refused.json()["code"] == "service_unavailable"
    assert refused["Retry-After"]
    assert accepted.status_code == 201, accepted.json()
    assert _stock(sku) == (9, 1, 0)
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_all_aliases_are_order_aware(buyer, sku):
    # Orders exist only on shard aliases; the default database has no order table at all.
    assert "orders_order" not in connections["default"].introspection.table_names()
    assert all(
        "orders_order" in connections[alias].introspection.table_names()
        for alias in all_database_aliases()[1:]
    )
