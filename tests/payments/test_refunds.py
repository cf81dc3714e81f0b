"""Refunds: full and partial, through the original channel, booked once."""

from __future__ import annotations

import pytest

from apps.orders.models import Order
from apps.payments.models import Account, Payment, Refund, Transfer
from apps.payments.services import payment_pay, refund_create, refunds_retry
from shop.sharding import shard_for_id
from tests.orders.conftest import api_client, assert_invariants_hold, new_key

ALL = "__all__"


def _order(order) -> Order:
    return Order.objects.using(shard_for_id(order.id)).get(id=order.id)


@pytest.mark.django_db(databases=ALL)
def test_partial_then_full_wallet_refunds(shopper, order):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    client = api_client(shopper)

    first = client.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 1000},
        format="json",
        HTTP_IDEMPOTENCY_KEY="r1",
    )
    assert first.status_code == 201 and first.json()["status"] == "succeeded"
    assert _order(order).status == "partially_refunded"
    replay = client.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 1000},
        format="json",
        HTTP_IDEMPOTENCY_KEY="r1",
    )
    assert replay.json() == first.json()

    too_much = client.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 2001},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert too_much.status_code == 400

    rest = client.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 2000},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert rest.status_code == 201
    assert _order(order).status == "refunded"
    stored = Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id)
    assert (stored.captured_amount, stored.refunded_amount) == (3000, 3000)
    assert Account.objects.get(key=f"wallet:{shopper.id}:EUR").available == 10_000
    assert Transfer.objects.filter(kind="refund").count() == 2
    nothing_left = client.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 1},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert nothing_left.status_code == 409
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_unpaid_orders_and_others_orders_cannot_be_refunded(shopper, order):
    from tests.factories.users import UserFactory

    unpaid = api_client(shopper).post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 100},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert unpaid.status_code == 409
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    stranger = api_client(UserFactory(username="other"))
    theirs = stranger.post(
        f"/api/v1/orders/{order.id}/refunds/",
        {"amount": 100},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert theirs.status_code == 404
    assert not Refund.objects.using(shard_for_id(order.id)).exists()


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_card_refunds_go_through_the_channel_and_wait_when_it_is_down(
    acquirer, channels, shopper, order
):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    assert payment.channel == "alpha"

    refund = refund_create(order_id=order.id, amount=500, actor="test")
    assert refund.status == "succeeded"
    assert acquirer.payment("alpha", str(payment.id))["refunded_amount"] == 500
    assert (
        Account.objects.get(key="clearing:alpha:EUR").available
        == -(3000 - payment.amount * 290 // 10_000 - 30) + 500
    )

    acquirer.set_faults("alpha", outage=True)
    waiting = refund_create(order_id=order.id, amount=2500, actor="test")
    assert waiting.status == "pending"
    assert _order(order).status == "partially_refunded"
    acquirer.set_faults("alpha")
    assert refunds_retry(older_than_seconds=0) == 1
    assert Refund.objects.using(shard_for_id(order.id)).get(id=waiting.id).status == "succeeded"
    assert acquirer.payment("alpha", str(payment.id))["refunded_amount"] == 3000
    assert _order(order).status == "refunded"
    assert_invariants_hold()
