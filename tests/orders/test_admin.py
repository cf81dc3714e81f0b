"""Operators: orders across shards, and the manual-review queue."""

from __future__ import annotations

import pytest

from apps.orders import services
from apps.orders.models import Order
from shop.models import ManualReviewItem, OutboxMessage
from shop.review import review_file
from shop.sharding import order_shard_aliases, shard_for_id, shard_for_user
from tests.factories.users import UserFactory

ALL = "__all__"


@pytest.fixture
def operator(client):
    user = UserFactory(username="op", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


@pytest.fixture
def orders_on_both_shards(sku):
    """One order on each shard: {alias: order}."""
    buyers = {}
    for i in range(200):
        user = UserFactory(username=f"shopper{i}")
        buyers.setdefault(shard_for_user(user.id), user)
        if len(buyers) == len(order_shard_aliases()):
            break
    return {
        alias: services.order_place(user_id=user.id, items=[{"sku": sku.code, "quantity": 1}])
        for alias, user in buyers.items()
    }


@pytest.mark.django_db(databases=ALL)
def test_orders_are_listed_per_shard_and_found_by_id(client, operator, orders_on_both_shards):
    first, second = order_shard_aliases()
    on_first, on_second = orders_on_both_shards[first], orders_on_both_shards[second]

    listing = client.get("/admin/orders/order/")
    assert listing.status_code == 200
    assert str(on_first.id) in listing.content.decode()
    assert str(on_second.id) not in listing.content.decode()

    other = client.get(f"/admin/orders/order/?shard={second}")
    assert str(on_second.id) in other.content.decode()

    found = client.get(f"/admin/orders/order/?q={on_second.id}")  # no shard given: decoded
    assert str(on_second.id) in found.content.decode()

    detail = client.get(f"/admin/orders/order/{on_second.id}/change/")
    assert detail.status_code == 200
    assert "created" in detail.content.decode()  # the events inline
    assert on_second.lines.get().sku_code in detail.content.decode()

    filtered = client.get(f"/admin/orders/order/?shard={second}&status__exact=cancelled")
    assert str(on_second.id) not in filtered.content.decode()


@pytest.mark.django_db(databases=ALL)
def test_operators_cancel_orders_from_the_admin(client, operator, orders_on_both_shards):
    second = order_shard_aliases()[1]
    order = orders_on_both_shards[second]
    response = client.post(
        f"/admin/orders/order/?shard={second}",
        {"action": "cancel_orders", "_selected_action": [order.id]},
    )
    assert response.status_code == 302
    stored = Order.objects.using(second).get(id=order.id)
    assert stored.status == "cancelled"
    assert stored.events.last().actor == f"operator:{operator.pk}"


@pytest.mark.django_db(databases=ALL)
def test_manual_review_assign_retry_and_resolve(client, operator, orders_on_both_shards):
    order = next(iter(orders_on_both_shards.values()))
    item, filed = review_file(kind="order_processing", reference=str(order.id), summary="stuck")
    assert filed
    assert (
        review_file(kind="order_processing", reference=str(order.id), summary="again")[1] is False
    )

    assert client.get("/admin/shop/manualreviewitem/").status_code == 200
    client.post(
        "/admin/shop/manualreviewitem/",
        {"action": "assign_to_me", "_selected_action": [item.id]},
    )
    item.refresh_from_db()
    assert (item.status, item.assignee_id) == ("assigned", operator.id)

    client.post(
        "/admin/shop/manualreviewitem/", {"action": "retry_now", "_selected_action": [item.id]}
    )
    alias = shard_for_id(order.id)
    assert OutboxMessage.objects.using(alias).filter(task=services.PROCESS_TASK).exists()

    colleague = UserFactory(username="colleague", is_staff=True)
    client.post(f"/admin/shop/manualreviewitem/{item.id}/change/", {"assignee": colleague.id})
    item.refresh_from_db()
    assert item.assignee_id == colleague.id

    refused = client.post(
        f"/admin/shop/manualreviewitem/{item.id}/change/",
        {"assignee": colleague.id, "resolve": "on"},
    )
    item.refresh_from_db()
    assert item.status == "assigned"  # a note is required
    assert refused.status_code == 302
    client.post(
        f"/admin/shop/manualreviewitem/{item.id}/change/",
        {"assignee": colleague.id, "resolve": "on", "resolution_note": "re-allocated by hand"},
    )
    item.refresh_from_db()
    assert (item.status, item.resolved_by_id, item.resolution_note) == (
        "resolved",
        operator.id,
        "re-allocated by hand",
    )
    assert ManualReviewItem.objects.count() == 1
