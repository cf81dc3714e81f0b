"""The storefront order page offers the buyer what fits the order's status: pay or cancel,
cancel with a full refund, or request a refund; and it never shows who at the shop did what."""

from __future__ import annotations

import pytest

from apps.orders import services as orders
from apps.orders.models import Order
from apps.payments.models import Account, Refund, RefundRequest
from apps.payments.services import payment_pay, refund_create
from shop.sharding import shard_for_id
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold
from tests.payments.conftest import written_counts

ALL = "__all__"


def _order(order_id) -> Order:
    return Order.objects.using(shard_for_id(order_id)).get(id=order_id)


def _page(client, order) -> str:
    return client.get(f"/orders/{order.id}/").content.decode()


@pytest.mark.django_db(databases=ALL)
def test_an_unpaid_order_offers_pay_and_cancel(client, shopper, order):
    client.force_login(shopper)
    page = client.get(f"/orders/{order.id}/")
    html = page.content.decode()
    assert "Pay now" in html and "Cancel order" in html
    assert page.context["cancel_key"] in html
    assert "Cancel and get a full refund" not in html and "Request a refund" not in html


@pytest.mark.django_db(databases=ALL)
def test_a_paid_order_is_cancelled_and_refunded_from_its_page(
    client, processing_held, shopper, order
):
    # Given the buyer's paid order, on its page
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    client.force_login(shopper)
    page = client.get(f"/orders/{order.id}/")
    html = page.content.decode()
    assert "Cancel and get a full refund" in html and "Request a refund" not in html
    key = page.context["cancel_key"]

    # When they cancel it (and the button is clicked twice)
    first = client.post(f"/orders/{order.id}/cancel/", {"cancel_key": key}, follow=True)
    client.post(f"/orders/{order.id}/cancel/", {"cancel_key": key})

    # Then it is cancelled and refunded once, and the page says so, in the buyer's words
    assert "refunded to your wallet" in first.content.decode()
    assert _order(order.id).status == "cancelled"
    assert Refund.objects.using(shard_for_id(order.id)).count() == 1
    assert Account.objects.get(key=f"wallet:{shopper.id}:EUR").available == 10_000
    html = _page(client, order)
    assert "cancelled by the buyer before fulfilment" in html
    assert "<td>You</td>" in html and "user:" not in html and "buyer:" not in html
    assert "Cancel and get a full refund" not in html
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_buyer_requests_a_refund_from_the_order_page(client, processing_held, shopper, order):
    # Given the buyer's order in fulfilment, part of it refunded by the shop
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    orders.order_fulfilment_run(order_id=order.id)
    refund_create(order_id=order.id, amount=500, actor="operator:77", reason="late delivery")
    client.force_login(shopper)
    page = client.get(f"/orders/{order.id}/")
    html = page.content.decode()
    assert "Request a refund" in html and "Cancel and get a full refund" not in html
    assert "late delivery" in html and "The shop" in html and "operator:" not in html
    key = page.context["refund_key"]

    # An amount that is not one is refused, and nothing is written
    before = written_counts()
    bad = client.post(
        f"/orders/{order.id}/refund-requests/",
        {"refund_key": key, "reason": "broken", "amount": "12.345"},
        follow=True,
    )
    assert "Enter the amount like 12.50" in bad.content.decode()
    assert written_counts() == before

    # When they ask for €12.50 back, saying why (twice, by a double click)
    form = {"refund_key": key, "reason": "The lid is broken.", "amount": "12,5"}
    client.post(f"/orders/{order.id}/refund-requests/", form)
    client.post(f"/orders/{order.id}/refund-requests/", form)

    # Then one request waits for the shop, and the page shows it instead of the form
    (request,) = RefundRequest.objects.using(shard_for_id(order.id)).all()
    assert (request.amount, request.reason, request.status) == (
        1250,
        "The lid is broken.",
        "requested",
    )
    html = _page(client, order)
    assert "waiting for the shop" in html and "Request a refund" not in html
    assert "The lid is broken." in html


@pytest.mark.django_db(databases=ALL)
def test_buyers_cannot_act_on_others_orders_from_the_storefront(
    client, processing_held, shopper, order
):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    client.force_login(UserFactory(username="stranger"))
    before = written_counts()
    assert client.get(f"/orders/{order.id}/").status_code == 404
    assert client.post(f"/orders/{order.id}/cancel/", {"cancel_key": "k"}).status_code == 404
    assert client.post(f"/orders/{order.id}/refund-requests/", {"reason": "x"}).status_code == 404
    assert written_counts() == before
    assert _order(order.id).status == "paid"
