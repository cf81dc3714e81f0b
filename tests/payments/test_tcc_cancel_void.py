"""Cancelling a card payment: the channel's refusal to void is settled by asking it, and money
it has already captured is never written off as a cancelled payment."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from apps.orders.models import Order
from apps.payments.models import Payment, TccBranch, TccTransaction
from apps.payments.services import coordinator, payment_pay, tcc_recover
from shop.models import ManualReviewItem
from shop.sharding import shard_for_id
from tests.orders.conftest import assert_invariants_hold

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__"),
]


def _unknown_card_payment(acquirer, shopper, order, settings, outcome="authorized") -> Payment:
    """A card payment at alpha whose answer was lost: `unknown`, its transaction `trying`; the
    bank decides it (``outcome``: authorized or declined) a moment later."""
    declines = {"decline_rate": 1.0} if outcome == "declined" else {}
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500, **declines)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel="alpha")
    assert payment.status == "unknown"
    acquirer.set_faults("alpha")
    deadline = time.monotonic() + 10
    while acquirer.payment("alpha", str(payment.id))["status"] != outcome:
        assert time.monotonic() < deadline, f"the bank never {outcome} it"
        time.sleep(0.1)
    return payment


def _decide_cancel(payment: Payment) -> TccTransaction:
    tcc = TccTransaction.objects.get(payment_id=payment.id)
    assert coordinator._decide(tcc, TccTransaction.Status.CANCELLING) == "cancelling"
    TccTransaction.objects.filter(id=tcc.id).update(next_retry_at=timezone.now())
    return tcc


def test_a_payment_the_bank_captured_is_not_cancelled_but_sent_to_review(
    acquirer, channels, shopper, order, settings
):
    # Given a transaction decided `cancelling` whose payment the bank has already captured
    payment = _unknown_card_payment(acquirer, shopper, order, settings)
    status, _ = acquirer.call("POST", f"/channels/alpha/payments/{payment.id}/capture", {})
    assert status == 200
    tcc = _decide_cancel(payment)

    # When recovery cancels it, the bank refuses the void
    assert tcc_recover() == {"retry": 1}

    # Then nothing pretends the cancel worked: the transaction stays open and backs off,
    tcc.refresh_from_db()
    assert (tcc.status, tcc.attempts) == ("cancelling", 1)
    assert "cannot void a captured payment" in tcc.last_error
    assert TccBranch.objects.get(transaction=tcc, branch="channel:alpha").status != "cancelled"
    # the payment is not marked failed and the order stays held (no second payment can start)
    alias = shard_for_id(order.id)
    assert Payment.objects.using(alias).get(id=payment.id).status != "failed"
    held = Order.objects.using(alias).get(id=order.id)
    assert (held.status, held.payment_started_at is not None) == ("pending_payment", True)
    assert acquirer.payment("alpha", str(payment.id))["status"] == "captured"
    # and operators are told, once however often recovery retries
    item = ManualReviewItem.objects.get()
    assert (item.kind, item.reference) == ("payment_void_refused", str(payment.id))
    assert item.details["channel_status"] == "captured"
    TccTransaction.objects.filter(id=tcc.id).update(next_retry_at=timezone.now())
    assert tcc_recover() == {"retry": 1}
    assert ManualReviewItem.objects.count() == 1
    assert_invariants_hold()


def test_a_void_refused_because_the_bank_declined_it_cancels_quietly(
    acquirer, channels, shopper, order, settings
):
    # Given a transaction decided `cancelling` whose payment the bank declined
    payment = _unknown_card_payment(acquirer, shopper, order, settings, outcome="declined")
    tcc = _decide_cancel(payment)

    # When recovery cancels it, then the refused void is settled by the bank's answer
    assert tcc_recover() == {"cancelled": 1}
    alias = shard_for_id(order.id)
    assert Payment.objects.using(alias).get(id=payment.id).status == "failed"
    assert Order.objects.using(alias).get(id=order.id).payment_started_at is None
    assert TccTransaction.objects.get(id=tcc.id).status == "cancelled"
    assert not ManualReviewItem.objects.exists()
    assert_invariants_hold()
