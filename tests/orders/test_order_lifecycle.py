"""The order state machine, its API, and the expiry sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.inventory.models import Reservation, Stock
from apps.inventory.services import stock_reserve
from apps.orders import services
from apps.orders.exceptions import InvalidOrderState, OrderNotFound
from apps.orders.models import Order, OrderStatus
from shop.models import OutboxMessage
from shop.sharding import logical_shard_for_user, shard_for_id, shard_for_user
from shop.sharding.ids import id_generate
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, new_key, post_order

ALL = "__all__"


def _place(buyer, sku, quantity=2):
    return services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": quantity}])


def _stock(sku):
    stock = Stock.objects.get(sku=sku)
    return stock.available, stock.reserved, stock.sold


def _reload(order):
    return Order.objects.using(shard_for_id(order.id)).get(id=order.id)


@pytest.mark.django_db(databases=ALL)
def test_cancel_releases_stock_and_records_who_and_why(buyer, sku):
    order = _place(buyer, sku)
    services.order_cancel(order_id=order.id, actor="user:1", reason="changed my mind")
    order = _reload(order)
    assert order.status == "cancelled"
    assert _stock(sku) == (10, 0, 0)
    event = order.events.order_by("id").last()
    assert (event.from_status, event.to_status, event.actor, event.reason) == (
        "pending_payment",
        "cancelled",
        "user:1",
        "changed my mind",
    )
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_paid_commits_stock_and_queues_processing_through_the_outbox(buyer, sku):
    order = _place(buyer, sku)
    services.order_mark_paid(order_id=order.id, actor="system")
    assert _reload(order).status == "paid"
    assert _stock(sku) == (8, 0, 2)
    tasks = list(OutboxMessage.objects.using(shard_for_id(order.id)).values_list("task", "queue"))
    assert (services.PROCESS_TASK, "order.processing") in tasks
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    ("path", "then"),
    [
        (["paid", "processing"], "cancelled"),  # paid → cancelled is the buyer's cancel
        (["cancelled"], "paid"),
        (["cancelled"], "cancelled"),
        (["paid"], "paid"),
        (["paid", "processing"], "pending_payment"),
        (["expired"], "paid"),
    ],
)
def test_illegal_transitions_are_refused(buyer, sku, path, then):
    order = _place(buyer, sku)
    for status in path:
        Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(status=status)
    order = _reload(order)
    with pytest.raises(InvalidOrderState):
        services._transition(order, then, actor="test")
    assert _reload(order).status == path[-1]


@pytest.mark.django_db(databases=ALL)
def test_expire_only_when_due(buyer, sku):
    order = _place(buyer, sku)
    assert services.order_expire(order_id=order.id) is False
    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.order_expire(order_id=order.id) is True
    assert _reload(order).status == "expired"
    assert _stock(sku) == (10, 0, 0)
    assert services.order_expire(order_id=order.id) is False  # again: no second effect


@pytest.mark.django_db(databases=ALL)
def test_the_sweep_expires_unpaid_orders_and_repairs_crashed_checkouts(buyer, sku, settings):
    settings.ORPHAN_RESERVATION_GRACE = 0
    past = timezone.now() - timedelta(minutes=1)
    # an unpaid order past its expiry
    overdue = _place(buyer, sku, quantity=1)
    Order.objects.using(shard_for_id(overdue.id)).filter(id=overdue.id).update(expires_at=past)
    # a checkout that crashed after reserving (no order was ever written)
    orphan_id = id_generate(
        alias=shard_for_user(buyer.id), logical=logical_shard_for_user(buyer.id)
    )
    stock_reserve(order_id=orphan_id, user_id=buyer.id, items=[(sku.id, 2)], expires_at=past)
    # a paid order whose stock commit never landed
    paid = _place(buyer, sku, quantity=3)
    Order.objects.using(shard_for_id(paid.id)).filter(id=paid.id).update(status="paid")
    Reservation.objects.filter(order_id=paid.id).update(expires_at=past)
    # a fresh unpaid order the sweep must leave alone
    fresh = _place(buyer, sku, quantity=1)
    assert _stock(sku) == (3, 7, 0)

    result = services.orders_expire_sweep()

    assert (result.expired, result.released_orphans, result.committed) == (1, 1, 1)
    assert _reload(overdue).status == "expired"
    assert _reload(fresh).status == "pending_payment"
    assert _stock(sku) == (6, 1, 3)
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_api_lists_shows_and_cancels_only_the_callers_orders(buyer, sku):
    mine = api_client(buyer)
    created = post_order(mine, [{"sku": sku.code, "quantity": 1}]).json()
    order_id = created["id"]
    assert isinstance(order_id, str)  # 64-bit ids travel as strings
    stranger = api_client(UserFactory(username="stranger"))

    assert mine.get(f"/api/v1/orders/{order_id}/").json()["status"] == "pending_payment"
    assert [o["id"] for o in mine.get("/api/v1/orders/").json()["results"]] == [order_id]
    assert stranger.get(f"/api/v1/orders/{order_id}/").status_code == 404
    assert stranger.get("/api/v1/orders/").json()["count"] == 0
    cancel_theirs = stranger.post(
        f"/api/v1/orders/{order_id}/cancel/", HTTP_IDEMPOTENCY_KEY=new_key()
    )
    assert cancel_theirs.status_code == 404
    assert cancel_theirs.json()["code"] == "not_found"

    key = new_key()
    cancelled = mine.post(f"/api/v1/orders/{order_id}/cancel/", HTTP_IDEMPOTENCY_KEY=key)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    replay = mine.post(f"/api/v1/orders/{order_id}/cancel/", HTTP_IDEMPOTENCY_KEY=key)
    assert replay.json() == cancelled.json()
    again = mine.post(f"/api/v1/orders/{order_id}/cancel/", HTTP_IDEMPOTENCY_KEY=new_key())
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"


@pytest.mark.django_db(databases=ALL)
def test_order_endpoints_need_authentication(client):
    assert client.get("/api/v1/orders/").status_code in (401, 403)
    assert client.post("/api/v1/orders/", {}, content_type="application/json").status_code in (
        401,
        403,
    )


@pytest.mark.django_db(databases=ALL)
def test_implausible_order_ids_are_404(buyer):
    client = api_client(buyer)
    for order_id in ["1", "99999999999999999", str(2**63 - 1)]:
        assert client.get(f"/api/v1/orders/{order_id}/").status_code == 404
    with pytest.raises(OrderNotFound):
        services.order_cancel(order_id=1, actor="test")


@pytest.mark.django_db(databases=ALL)
def test_audit_reports_a_broken_order(buyer, sku, capsys):
    order = _place(buyer, sku)
    # An order marked cancelled whose stock was never released: a violation
    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(
        status=OrderStatus.CANCELLED
    )
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_invariants")
    assert exit_info.value.code == 1
    assert (
        f"order {order.id} is cancelled but its reservations are ['held']"
        in capsys.readouterr().out
    )
