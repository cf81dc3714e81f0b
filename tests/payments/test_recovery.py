"""A process killed in the middle of a payment: the recovery job finishes the transaction.

A wallet payment commits four transactions (docs/payments.md); the payer is killed at each
boundary between them: after the order's try (adopted and cancelled, the late wallet step
refused), after the wallet's transaction with the decision, and after the order's confirm
(both confirmed). Killed inside a transaction, nothing of it commits (PostgreSQL)."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.inventory.models import Reservation
from apps.orders.models import Order
from apps.payments.models import Account, Payment, TccBranch, TccTransaction, Transfer
from apps.payments.services import coordinator, tcc_recover
from shop.models import TccFence
from shop.sharding import shard_for_id
from tests.orders.conftest import assert_invariants_hold
from tests.workers import django_process, wait_for

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]


def test_a_process_killed_between_try_and_confirm_is_finished_by_recovery(
    acquirer, channels, shopper, order
):
    # Given a payer process stuck in the middle of its try: the bank is slow to authorize
    acquirer.set_faults("alpha", latency_ms=4000)
    payer = django_process(
        "from apps.payments.services import payment_pay\n"
        f"payment_pay(order_id={order.id}, user_id={shopper.id}, method='card', channel='alpha')\n",
        ACQUIRER_URL=acquirer.url,
        BREAKER_CALL_TIMEOUT="30",
    )
    try:
        tcc = wait_for(lambda: TccTransaction.objects.filter(order_id=order.id).first(), timeout=30)
        wait_for(lambda: TccBranch.objects.filter(transaction=tcc, branch="channel:alpha").exists())
        # The branch row is written just before the call to the bank; the bank holds the call
        # for 4 s, so one second from now it has surely arrived (the bank shows a payment only
        # once its latency has passed, so there is nothing to poll for).
        time.sleep(1)
        # When it is killed before it could confirm
        os.killpg(payer.pid, signal.SIGKILL)
        payer.wait(timeout=10)
    finally:
        if payer.poll() is None:
            os.killpg(payer.pid, signal.SIGKILL)
    assert TccTransaction.objects.get(id=tcc.id).status == "trying"
    assert Order.objects.using(shard_for_id(order.id)).get(id=order.id).status == "pending_payment"

    # The bank still authorized it (the request had arrived)
    acquirer.set_faults("alpha")
    wait_for(
        lambda: acquirer.payment("alpha", str(tcc.payment_id))["status"] == "authorized", timeout=15
    )

    # Then the recovery job, once the transaction is overdue, asks the bank and confirms it
    TccTransaction.objects.filter(id=tcc.id).update(next_retry_at=timezone.now())
    assert tcc_recover() == {"confirmed": 1}
    payment = Payment.objects.using(shard_for_id(tcc.payment_id)).get(id=tcc.payment_id)
    assert payment.status == "succeeded"
    assert Order.objects.using(shard_for_id(order.id)).get(id=order.id).status == "paid"
    assert acquirer.payment("alpha", str(tcc.payment_id))["status"] == "captured"
    assert tcc_recover() == {}  # nothing left to do
    assert_invariants_hold()


def _wallet_payer_killed_before(step: str, shopper, order) -> None:
    """A process paying ``order`` with the wallet, SIGKILLed as it enters ``step``: every
    transaction before that step committed, none after it ran."""
    payer = django_process(
        "import os, signal\n"
        "from apps.payments.services import coordinator\n"
        f"coordinator.{step} = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"coordinator.payment_pay(order_id={order.id}, user_id={shopper.id}, method='wallet')\n",
    )
    try:
        payer.wait(timeout=60)
    finally:
        if payer.poll() is None:
            os.killpg(payer.pid, signal.SIGKILL)
    assert payer.returncode == -signal.SIGKILL, payer.stdout.read()


def _wallet(shopper) -> tuple[int, int]:
    wallet = Account.objects.get(key=f"wallet:{shopper.id}:EUR")
    return wallet.available, wallet.frozen


def _reservations(order) -> set[str]:
    return set(Reservation.objects.filter(order_id=order.id).values_list("status", flat=True))


def test_a_wallet_payer_killed_after_the_orders_try_is_cancelled_and_its_late_wallet_step_refused(
    shopper, order, settings
):
    # Given a payer killed after the order's try committed (the payment pending, the order
    # held) and before the wallet's transaction: no TCC row exists yet
    _wallet_payer_killed_before("_wallet_pay_and_decide", shopper, order)
    alias = shard_for_id(order.id)
    payment = Payment.objects.using(alias).get(order_id=order.id)
    assert payment.status == "pending"
    assert Order.objects.using(alias).get(id=order.id).payment_started_at is not None
    assert not TccTransaction.objects.exists()
    assert _wallet(shopper) == (10_000, 0)

    # When recovery runs before the payment is overdue, it leaves it alone (a live payer may
    # be between its transactions)
    assert tcc_recover() == {}
    # and once it is overdue, it adopts it and presumes abort
    Payment.objects.using(alias).filter(id=payment.id).update(
        updated_at=timezone.now() - timedelta(seconds=settings.TCC_TRYING_TIMEOUT + 1)
    )
    assert tcc_recover() == {"cancelled": 1}

    # Then the order is payable again and the payment failed; the wallet never moved
    order_now = Order.objects.using(alias).get(id=order.id)
    assert (order_now.status, order_now.payment_started_at) == ("pending_payment", None)
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == ("failed", "abandoned")
    assert _wallet(shopper) == (10_000, 0)
    # and should the payer have been only slow, its wallet transaction is refused (anti-hang:
    # the wallet's fence is `suspended` and the xid is taken)
    assert TccFence.objects.get(xid=f"pay-{payment.id}", branch="wallet").status == "suspended"
    with pytest.raises(coordinator._AlreadyDecided):
        coordinator._wallet_pay_and_decide(payment)
    assert _wallet(shopper) == (10_000, 0)
    assert not Transfer.objects.filter(reference=f"pay-{payment.id}").exists()
    assert_invariants_hold()


@pytest.mark.parametrize(
    "step, order_paid",
    [
        ("_confirm_order", False),  # killed after the wallet's transaction (the decision)
        ("_wallet_finish", True),  # killed after the order's confirm
    ],
)
def test_a_wallet_payer_killed_after_the_decision_is_confirmed_by_recovery(
    shopper, order, step, order_paid
):
    # Given a payer killed after the wallet's transaction committed: the money moved and the
    # transaction is decided `confirming`
    _wallet_payer_killed_before(step, shopper, order)
    alias = shard_for_id(order.id)
    tcc = TccTransaction.objects.get(order_id=order.id)
    assert tcc.status == "confirming"
    assert _wallet(shopper) == (7000, 0)
    assert (Order.objects.using(alias).get(id=order.id).status == "paid") is order_paid
    assert _reservations(order) == {"held"}

    # When recovery runs once the transaction is due
    TccTransaction.objects.filter(id=tcc.id).update(next_retry_at=timezone.now())
    assert tcc_recover() == {"confirmed": 1}

    # Then the payment is finished exactly once: order paid, stock sold, money moved once
    assert Order.objects.using(alias).get(id=order.id).status == "paid"
    payment = Payment.objects.using(alias).get(id=tcc.payment_id)
    assert (payment.status, payment.captured_amount) == ("succeeded", 3000)
    assert _reservations(order) == {"committed"}
    assert _wallet(shopper) == (7000, 0)
    assert Account.objects.get(key="merchant:EUR").available == 3000
    assert sorted(Transfer.objects.filter(reference=tcc.xid).values_list("kind", flat=True)) == [
        "wallet_capture",
        "wallet_freeze",
    ]
    assert set(TccBranch.objects.filter(transaction=tcc).values_list("status", flat=True)) == {
        "confirmed"
    }
    assert tcc_recover() == {}  # nothing left to do
    assert_invariants_hold()
