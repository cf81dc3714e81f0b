"""Refund requests: a buyer whose order is being prepared (or has shipped) asks for a refund;
an operator approves it (the refund runs) or declines it with a note the buyer sees."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from apps.orders import services as orders
from apps.orders.models import Order, OrderEvent
from apps.payments.exceptions import RefundInvalid, RefundRequestDecided
from apps.payments.models import Account, Refund, RefundRequest, Transfer
from apps.payments.services import (
    payment_pay,
    refund_create,
    refund_request_approve,
    refund_request_decline,
    refund_request_file,
)
from shop.models import ManualReviewItem
from shop.sharding import shard_for_id
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.payments.conftest import support_user, written_counts

ALL = "__all__"


def _order(order_id) -> Order:
    return Order.objects.using(shard_for_id(order_id)).get(id=order_id)


def _request(client, order_id, body, key=None):
    return client.post(
        f"/api/v1/orders/{order_id}/refund-requests/",
        body,
        format="json",
        HTTP_IDEMPOTENCY_KEY=key or new_key(),
    )


def _wallet(user) -> int:
    return Account.objects.get(key=f"wallet:{user.id}:EUR").available


@pytest.fixture
def processing(processing_held, shopper, order):
    """The shopper's order, paid from the wallet (€30.00) and in fulfilment."""
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert orders.order_fulfilment_run(order_id=order.id)
    return _order(order.id)


@pytest.mark.django_db(databases=ALL)
def test_a_buyer_asks_for_a_refund_and_operators_get_a_review_item(shopper, processing):
    client = api_client(shopper)

    # When the buyer asks for part of the money back, saying why
    asked = {"reason": "  One mug was chipped.  ", "amount": 1500}
    response = _request(client, processing.id, asked, "rq1")

    # Then the request is recorded and waits for the shop, with a review item for operators
    assert response.status_code == 201, response.json()
    body = response.json()
    assert set(body) == {"id", "order", "status", "amount", "reason", "created_at"}
    assert (body["order"], body["status"], body["amount"], body["reason"]) == (
        str(processing.id),
        "requested",
        1500,
        "One mug was chipped.",
    )
    item = ManualReviewItem.objects.get(kind="refund_request", reference=body["id"])
    assert item.status == "open" and "One mug was chipped." in item.summary
    assert item.details["decide"].endswith(f"/admin/payments/refundrequest/{body['id']}/change/")
    event = OrderEvent.objects.using(shard_for_id(processing.id)).get(kind="refund_requested")
    assert (event.actor, event.reason) == (f"user:{shopper.id}", "One mug was chipped.")
    # Nothing moved yet
    assert _order(processing.id).status == "processing" and _wallet(shopper) == 7_000
    assert not Refund.objects.using(shard_for_id(processing.id)).exists()

    # The order shows it, without anything about who will decide
    shown = client.get(f"/api/v1/orders/{processing.id}/").json()["refund_requests"]
    assert shown == [
        {
            "id": body["id"],
            "status": "requested",
            "amount": 1500,
            "reason": "One mug was chipped.",
            "decision_note": "",
            "created_at": body["created_at"],
        }
    ]

    # A repeat with the same key replays; a second request while one is open is refused
    before = written_counts()
    replay = _request(client, processing.id, asked, "rq1")
    assert replay.status_code == 201 and replay.json() == body
    second = _request(client, processing.id, {"reason": "and another"})
    assert second.status_code == 409 and second.json()["code"] == "refund_request_open"
    after = written_counts()
    assert after.pop("IdempotencyRecord") == before.pop("IdempotencyRecord") + 1  # the refusal
    assert after == before


@pytest.mark.django_db(databases=ALL)
def test_without_an_amount_the_request_is_for_all_that_is_left(shopper, processing):
    refund_create(order_id=processing.id, amount=1000, actor="operator:1", reason="goodwill")
    response = _request(api_client(shopper), processing.id, {"reason": "never arrived"})
    assert response.status_code == 201 and response.json()["amount"] == 2000


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": ""},
        {"reason": "   "},
        {"reason": "x" * 501},
        {"reason": "why", "amount": 0},
        {"reason": "why", "amount": -5},
        {"reason": "why", "amount": 3001},
        {"reason": "why", "amount": "all"},
    ],
)
@pytest.mark.django_db(databases=ALL)
def test_a_request_needs_a_reason_and_a_sensible_amount(shopper, processing, body):
    before = written_counts()
    response = _request(api_client(shopper), processing.id, body)
    assert response.status_code == 400 and response.json()["code"] == "validation_error"
    assert written_counts() == before


@pytest.mark.django_db(databases=ALL)
def test_only_orders_in_or_after_fulfilment_can_have_a_refund_request(
    processing_held, shopper, order
):
    client = api_client(shopper)

    def refused(order_id, hint):
        response = _request(client, order_id, {"reason": "why"})
        assert response.status_code == 409, response.json()
        assert response.json()["code"] == "invalid_state"
        assert hint in response.json()["detail"]

    refused(order.id, "pay for it, or cancel it")  # pending_payment
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    before = written_counts()
    refused(order.id, "cancel it instead")  # paid
    orders.order_fulfilment_run(order_id=order.id)
    refund_create(order_id=order.id, amount=3000, actor="operator:1", reason="all of it")
    refused(order.id, "nothing to refund")  # refunded
    stranger = _request(api_client(UserFactory(username="stranger")), order.id, {"reason": "x"})
    assert stranger.status_code == 404
    after = written_counts()
    for counted in ("RefundRequest", "review_items"):
        assert after[counted] == before[counted]


@pytest.mark.django_db(databases=ALL)
def test_approving_runs_the_refund_and_resolves_the_review_item(operator, shopper, processing):
    # Given the buyer's open request for €15.00
    request = refund_request_file(
        order_id=processing.id, user_id=shopper.id, reason="chipped", amount=1500
    )

    # When an operator approves it
    approved = refund_request_approve(request_id=request.id, operator=operator)

    # Then the refund ran in the operator's name, for the buyer's reason; the request is
    # approved with it, and the review item closed
    assert approved.status == "approved" and approved.decided_by == f"operator:{operator.id}"
    refund = Refund.objects.using(shard_for_id(processing.id)).get(id=approved.refund_id)
    assert (refund.status, refund.amount, refund.actor, refund.reason) == (
        "succeeded",
        1500,
        f"operator:{operator.id}",
        "chipped",
    )
    assert _wallet(shopper) == 8_500
    assert _order(processing.id).status == "partially_refunded"
    assert Transfer.objects.get(reference=f"refund-{refund.id}").memo == "chipped"
    item = ManualReviewItem.objects.get(kind="refund_request", reference=str(request.id))
    assert item.status == "resolved" and item.resolved_by == operator

    # Approving again changes nothing; declining it now is refused
    again = refund_request_approve(request_id=request.id, operator=operator)
    assert again.refund_id == approved.refund_id
    assert Refund.objects.using(shard_for_id(processing.id)).count() == 1
    with pytest.raises(RefundRequestDecided):
        refund_request_decline(request_id=request.id, operator=operator, note="no")
    assert _wallet(shopper) == 8_500
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_declining_shows_the_shops_note_to_the_buyer(client, operator, shopper, processing):
    request = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="meh")
    with pytest.raises(RefundInvalid):  # a decline must say why
        refund_request_decline(request_id=request.id, operator=operator, note="  ")
    assert RefundRequest.objects.using(shard_for_id(request.id)).get(id=request.id).status == (
        "requested"
    )

    declined = refund_request_decline(
        request_id=request.id, operator=operator, note="Worn items cannot be returned."
    )

    assert declined.status == "declined"
    item = ManualReviewItem.objects.get(kind="refund_request", reference=str(request.id))
    assert item.status == "resolved"
    # The buyer sees the answer, in the API and on the order page, but not who gave it
    body = api_client(shopper).get(f"/api/v1/orders/{processing.id}/").json()
    assert body["refund_requests"][0]["status"] == "declined"
    assert body["refund_requests"][0]["decision_note"] == "Worn items cannot be returned."
    assert "decided_by" not in str(body) and f"operator:{operator.id}" not in str(body)
    client.force_login(shopper)
    page = client.get(f"/orders/{processing.id}/").content.decode()
    assert "Worn items cannot be returned." in page
    assert "operator:" not in page and operator.username not in page
    assert "The shop" in page
    # Nothing moved; approving it now is refused; the buyer may ask again
    assert _wallet(shopper) == 7_000
    with pytest.raises(RefundRequestDecided):
        refund_request_approve(request_id=request.id, operator=operator)
    assert not Refund.objects.using(shard_for_id(processing.id)).exists()
    assert refund_request_decline(request_id=request.id, operator=operator, note="x").status == (
        "declined"
    )  # idempotent: the first note stands
    assert _request(api_client(shopper), processing.id, {"reason": "it broke"}).status_code == 201
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_an_approval_that_no_longer_fits_leaves_the_request_open(operator, shopper, processing):
    request = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="all")
    # Meanwhile an operator refunded part of it directly
    refund_create(order_id=processing.id, amount=1000, actor="operator:1", reason="goodwill")
    with pytest.raises(RefundInvalid):
        refund_request_approve(request_id=request.id, operator=operator)
    stored = RefundRequest.objects.using(shard_for_id(request.id)).get(id=request.id)
    assert stored.status == "requested" and stored.refund_id is None
    assert Refund.objects.using(shard_for_id(processing.id)).count() == 1
    assert_invariants_hold()


# --- Operators in the admin --------------------------------------------------------------------


@pytest.mark.django_db(databases=ALL)
def test_operators_approve_and_decline_in_the_admin(client, operator, shopper, processing):
    first = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="a", amount=100)
    refund_request_decline(request_id=first.id, operator=operator, note="try again")
    second = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="b", amount=200)
    shard = shard_for_id(processing.id)
    client.force_login(operator)
    url = f"/admin/payments/refundrequest/?shard={shard}"

    listing = client.get(url)
    assert listing.status_code == 200
    html = listing.content.decode()
    assert str(second.id) in html and "Approve (refund runs)" in html and "Decline…" in html

    response = client.post(url, {"action": "approve", "_selected_action": [second.id]})
    assert response.status_code == 302
    stored = RefundRequest.objects.using(shard).get(id=second.id)
    assert stored.status == "approved" and stored.refund_id
    assert _wallet(shopper) == 7_200

    third = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="c", amount=300)
    form = client.post(url, {"action": "decline", "_selected_action": [third.id]})
    assert form.status_code == 200 and "The buyer sees your note" in form.content.decode()
    empty = client.post(
        url, {"action": "decline", "_selected_action": [third.id], "apply": "1", "note": ""}
    )
    assert empty.status_code == 200  # the form again: a note is required
    assert RefundRequest.objects.using(shard).get(id=third.id).status == "requested"
    done = client.post(
        url,
        {"action": "decline", "_selected_action": [third.id], "apply": "1", "note": "Sorry."},
    )
    assert done.status_code == 302
    assert RefundRequest.objects.using(shard).get(id=third.id).decision_note == "Sorry."
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_staff_without_the_permission_cannot_decide(client, shopper, processing):
    request = refund_request_file(order_id=processing.id, user_id=shopper.id, reason="a")
    viewer = support_user("viewer", permitted=False)
    client.force_login(viewer)
    url = f"/admin/payments/refundrequest/?shard={shard_for_id(processing.id)}"
    listing = client.get(url)
    assert listing.status_code == 200
    assert "Approve (refund runs)" not in listing.content.decode()
    before = written_counts()

    response = client.post(
        url, {"action": "approve", "_selected_action": [request.id]}, follow=True
    )

    assert "Only operators with the permission" in response.content.decode()
    assert written_counts() == before
    assert RefundRequest.objects.using(shard_for_id(request.id)).get(id=request.id).status == (
        "requested"
    )


# --- Two operators at once ---------------------------------------------------------------------


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_two_operators_approving_at_once_refund_once(processing_held, shopper, order):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    orders.order_fulfilment_run(order_id=order.id)
    request = refund_request_file(order_id=order.id, user_id=shopper.id, reason="x", amount=900)
    operators = [support_user("op-a"), support_user("op-b")]
    gate = threading.Barrier(len(operators))
    outcomes = []

    def approve(operator):
        gate.wait()
        try:
            outcomes.append(refund_request_approve(request_id=request.id, operator=operator).status)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=approve, args=(op,)) for op in operators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert outcomes == ["approved", "approved"]  # both see the one decision
    assert Refund.objects.using(shard_for_id(order.id)).count() == 1
    assert _wallet(shopper) == 7_900
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_order_body_is_what_the_order_serializer_writes(shopper, processing):
    # Given a paid order in fulfilment with a refund request, and a brand new order
    from apps.orders.api import OrderOutputSerializer, order_body
    from apps.orders.selectors import order_get

    refund_request_file(order_id=processing.id, user_id=shopper.id, reason="chipped", amount=500)
    sku_code = processing.lines.get().sku_code
    fresh = orders.order_place(user_id=shopper.id, items=[{"sku": sku_code, "quantity": 1}])

    for order in (order_get(order_id=processing.id), fresh):
        # When the hot path builds its body directly
        body = order_body(order)

        # Then it is exactly the serializer's (the API's documented schema), field for field
        assert body == OrderOutputSerializer(order).data
    paid = order_body(order_get(order_id=processing.id))
    assert paid["paid_at"] and paid["payments"][0]["method"] == "wallet"
    assert paid["refund_requests"][0]["reason"] == "chipped"
    assert order_body(fresh)["paid_at"] is None
