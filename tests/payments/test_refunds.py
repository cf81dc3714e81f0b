"""Refunds are an operator's action: staff holding payments.refund_payment refund any buyer's
paid order, in full or in part, through the original channel, booked once, saying why."""

from __future__ import annotations

import pytest

from apps.orders.models import Order, OrderEvent
from apps.payments.models import Account, Payment, Refund, Transfer
from apps.payments.services import payment_pay, refund_create, refunds_retry
from shop.sharding import shard_for_id
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.payments.conftest import support_user, written_counts

ALL = "__all__"


def _order(order) -> Order:
    return Order.objects.using(shard_for_id(order.id)).get(id=order.id)


def _refund(client, order_id, body, key=None):
    return client.post(
        f"/api/v1/orders/{order_id}/refunds/",
        body,
        format="json",
        HTTP_IDEMPOTENCY_KEY=key or new_key(),
    )


def _wallet(user) -> int:
    return Account.objects.get(key=f"wallet:{user.id}:EUR").available


@pytest.mark.django_db(databases=ALL)
def test_a_buyer_cannot_refund_their_own_paid_order(shopper, order):
    # Given the buyer's paid order
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    before, wallet, status = written_counts(), _wallet(shopper), _order(order).status

    # When the buyer asks the refunds endpoint for their money back
    response = _refund(api_client(shopper), order.id, {"amount": 3000, "reason": "please"})

    # Then it is refused, and nothing at all was written: no refund, no journal transfer,
    # no idempotency record, no history
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert set(response.json()) == {"code", "detail"}
    assert written_counts() == before
    assert _wallet(shopper) == wallet and _order(order).status == status


@pytest.mark.django_db(databases=ALL)
def test_the_refusal_comes_before_the_order_is_looked_up(shopper, order):
    # A stranger learns nothing: an order that does not exist and someone else's order
    # answer the same 403, and neither leaves a trace.
    stranger = api_client(UserFactory(username="stranger"))
    before = written_counts()
    theirs = _refund(stranger, order.id, {"amount": 1, "reason": "x"})
    missing = _refund(stranger, order.id + 1, {"amount": 1, "reason": "x"})
    assert theirs.status_code == missing.status_code == 403
    assert theirs.json() == missing.json()
    assert written_counts() == before


@pytest.mark.django_db(databases=ALL)
def test_staff_without_the_refund_permission_and_anonymous_callers_are_refused(shopper, order):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    before = written_counts()

    viewer = support_user("viewer", permitted=False)  # staff, may view payments, not refund
    refused = _refund(api_client(viewer), order.id, {"amount": 100, "reason": "goodwill"})
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"

    # The permission without staff status is not enough either.
    not_staff = support_user("not-staff", staff=False)
    assert _refund(api_client(not_staff), order.id, {"amount": 100, "reason": "x"}).status_code == (
        403
    )

    from rest_framework.test import APIClient

    anonymous = _refund(APIClient(), order.id, {"amount": 100, "reason": "x"})
    assert anonymous.status_code == 401
    assert written_counts() == before


@pytest.mark.django_db(databases=ALL)
def test_an_operator_refunds_any_buyers_order_in_part_then_in_full(operator, shopper, order):
    # Given a buyer's paid order and support staff holding the permission through a group
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert not operator.is_superuser
    client = api_client(operator)

    # When the operator refunds part of it, saying why
    first = _refund(client, order.id, {"amount": 1000, "reason": "one item arrived broken"}, "r1")

    # Then the refund ran, and who and why are on the refund, the order's history and the
    # journal transfer
    assert first.status_code == 201, first.json()
    assert first.json()["status"] == "succeeded"
    assert first.json()["reason"] == "one item arrived broken"
    alias = shard_for_id(order.id)
    refund = Refund.objects.using(alias).get(id=int(first.json()["id"]))
    actor = f"operator:{operator.id}"
    assert (refund.actor, refund.reason) == (actor, "one item arrived broken")
    changed = OrderEvent.objects.using(alias).filter(order_id=order.id, kind="status_changed")
    last = changed.last()
    assert (last.to_status, last.actor, last.reason) == (
        "partially_refunded",
        actor,
        "one item arrived broken",
    )
    transfer = Transfer.objects.get(kind="refund", reference=f"refund-{refund.id}")
    assert (transfer.memo, transfer.actor) == ("one item arrived broken", actor)
    assert _order(order).status == "partially_refunded"

    # A repeat with the same key replays, and moves nothing
    replay = _refund(client, order.id, {"amount": 1000, "reason": "one item arrived broken"}, "r1")
    assert replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
    assert Transfer.objects.filter(kind="refund").count() == 1

    # More than is left is refused; the rest is fine; then nothing is left
    assert _refund(client, order.id, {"amount": 2001, "reason": "rest"}).status_code == 400
    rest = _refund(client, order.id, {"amount": 2000, "reason": "the buyer returned the rest"})
    assert rest.status_code == 201
    assert _order(order).status == "refunded"
    stored = Payment.objects.using(alias).get(id=payment.id)
    assert (stored.captured_amount, stored.refunded_amount) == (3000, 3000)
    assert _wallet(shopper) == 10_000
    assert Transfer.objects.filter(kind="refund").count() == 2
    nothing_left = _refund(client, order.id, {"amount": 1, "reason": "again"})
    assert nothing_left.status_code == 409 and nothing_left.json()["code"] == "invalid_state"
    assert_invariants_hold()


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 500},
        {"amount": 500, "reason": ""},
        {"amount": 500, "reason": "   "},
        {"amount": 500, "reason": "x" * 301},
        {"amount": 0, "reason": "why"},
        {"amount": "lots", "reason": "why"},
        {"reason": "why"},
    ],
)
@pytest.mark.django_db(databases=ALL)
def test_a_refund_needs_a_positive_amount_and_a_reason(operator, shopper, order, body):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    before = written_counts()
    response = _refund(api_client(operator), order.id, body)
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert written_counts() == before  # not even the idempotency key is kept


@pytest.mark.django_db(databases=ALL)
def test_operators_cannot_refund_unpaid_or_missing_orders(operator, order):
    client = api_client(operator)
    unpaid = _refund(client, order.id, {"amount": 100, "reason": "why"})
    assert unpaid.status_code == 409 and unpaid.json()["code"] == "invalid_state"
    missing = _refund(client, order.id + 1, {"amount": 100, "reason": "why"})
    assert missing.status_code == 404
    assert not Refund.objects.using(shard_for_id(order.id)).exists()


@pytest.mark.django_db(databases=ALL)
def test_the_service_refuses_a_refund_without_a_reason(shopper, order):
    from apps.payments.exceptions import RefundInvalid

    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    with pytest.raises(RefundInvalid):
        refund_create(order_id=order.id, amount=100, actor="operator:1", reason=" ")
    assert not Refund.objects.using(shard_for_id(order.id)).exists()


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_card_refunds_go_through_the_channel_and_wait_when_it_is_down(
    acquirer, channels, shopper, order
):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    assert payment.channel == "alpha"

    refund = refund_create(order_id=order.id, amount=500, actor="operator:1", reason="late")
    assert refund.status == "succeeded"
    assert acquirer.payment("alpha", str(payment.id))["refunded_amount"] == 500
    assert (
        Account.objects.get(key="clearing:alpha:EUR").available
        == -(3000 - payment.amount * 290 // 10_000 - 30) + 500
    )

    acquirer.set_faults("alpha", outage=True)
    waiting = refund_create(order_id=order.id, amount=2500, actor="operator:1", reason="rest")
    assert waiting.status == "pending"
    assert _order(order).status == "partially_refunded"
    acquirer.set_faults("alpha")
    assert refunds_retry(older_than_seconds=0) == 1
    settled = Refund.objects.using(shard_for_id(order.id)).get(id=waiting.id)
    assert settled.status == "succeeded"
    assert acquirer.payment("alpha", str(payment.id))["refunded_amount"] == 3000
    assert _order(order).status == "refunded"
    # The retry runs in the operator's name, with their reason.
    last = OrderEvent.objects.using(shard_for_id(order.id)).filter(order_id=order.id).last()
    assert (last.actor, last.reason, last.to_status) == ("operator:1", "rest", "refunded")
    transfer = Transfer.objects.get(reference=f"refund-{waiting.id}")
    assert (transfer.memo, transfer.actor) == ("rest", "operator:1")
    assert_invariants_hold()


# --- The payments admin's "Refund…" action -------------------------------------------------------


def _second_order(shopper, order):
    from apps.orders import services as orders

    line = order.lines.get()
    return orders.order_place(user_id=shopper.id, items=[{"sku": line.sku_code, "quantity": 1}])


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


@pytest.mark.django_db(databases=ALL)
def test_an_operator_refunds_one_payment_from_the_admin(client, operator, shopper, order):
    # Given a paid order, part of it already refunded
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    refund_create(order_id=order.id, amount=500, actor="operator:9", reason="earlier")
    client.force_login(operator)
    url = f"/admin/payments/payment/?shard={shard_for_id(payment.id)}"
    assert "Refund… (asks the amount and why)" in client.get(url).content.decode()

    # When the operator picks "Refund…" the form proposes what is left
    form = client.post(url, {"action": "refund", "_selected_action": [payment.id]})
    assert form.status_code == 200
    assert form.context["form"].initial["amount"] == 2500

    # A refund without a reason is not possible
    before = written_counts()
    blank = client.post(
        url,
        {"action": "refund", "_selected_action": [payment.id], "apply": "1", "amount": "700"},
    )
    assert blank.status_code == 200 and "reason" in blank.context["form"].errors
    assert written_counts() == before

    # And with one, the refund runs, in the operator's name
    done = client.post(
        url,
        {
            "action": "refund",
            "_selected_action": [payment.id],
            "apply": "1",
            "amount": "700",
            "reason": "customer service gesture",
        },
        follow=True,
    )
    assert any("done" in text for text in _messages(done))
    refund = Refund.objects.using(shard_for_id(order.id)).filter(amount=700).get()
    assert (refund.status, refund.actor, refund.reason) == (
        "succeeded",
        f"operator:{operator.id}",
        "customer service gesture",
    )
    assert _wallet(shopper) == 7_000 + 500 + 700
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_several_payments_are_refunded_in_full_with_one_reason(client, operator, shopper, order):
    other = _second_order(shopper, order)
    payments = [
        payment_pay(order_id=o.id, user_id=shopper.id, method="wallet") for o in (order, other)
    ]
    client.force_login(operator)
    url = f"/admin/payments/payment/?shard={shard_for_id(order.id)}"
    selected = [p.id for p in payments]

    with_amount = client.post(
        url,
        {"action": "refund", "_selected_action": selected, "apply": "1", "amount": "1",
         "reason": "x"},
        follow=True,
    )  # fmt: skip
    assert any("leave the amount empty" in text for text in _messages(with_amount))
    assert not Refund.objects.using(shard_for_id(order.id)).exists()

    client.post(
        url,
        {"action": "refund", "_selected_action": selected, "apply": "1", "reason": "recall"},
    )
    refunds = Refund.objects.using(shard_for_id(order.id)).order_by("amount")
    assert [(r.amount, r.reason, r.status) for r in refunds] == [
        (1500, "recall", "succeeded"),
        (3000, "recall", "succeeded"),
    ]
    assert _order(order).status == "refunded" and _order(other).status == "refunded"
    assert _wallet(shopper) == 10_000
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_staff_without_the_permission_cannot_refund_from_the_admin(client, shopper, order):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    client.force_login(support_user("viewer", permitted=False))
    url = f"/admin/payments/payment/?shard={shard_for_id(payment.id)}"
    assert "Refund…" not in client.get(url).content.decode()
    before = written_counts()

    response = client.post(
        url,
        {"action": "refund", "_selected_action": [payment.id], "apply": "1", "amount": "100",
         "reason": "x"},
        follow=True,
    )  # fmt: skip

    assert any("Only operators with the permission" in text for text in _messages(response))
    assert written_counts() == before


@pytest.mark.django_db(databases=ALL)
def test_the_admin_refuses_more_payments_at_once_than_allowed(
    client, settings, operator, shopper, order
):
    settings.ADMIN_REFUND_BATCH_MAX = 1
    other = _second_order(shopper, order)
    selected = [payment_pay(order_id=o.id, user_id=shopper.id, method="wallet").id
                for o in (order, other)]  # fmt: skip
    client.force_login(operator)
    before = written_counts()
    response = client.post(
        f"/admin/payments/payment/?shard={shard_for_id(order.id)}",
        {"action": "refund", "_selected_action": selected, "apply": "1", "reason": "all"},
        follow=True,
    )
    assert any("at most 1 payments" in text for text in _messages(response))
    assert written_counts() == before
