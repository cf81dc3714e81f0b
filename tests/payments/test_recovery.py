"""A process killed in the middle of a payment: the recovery job finishes the transaction."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.utils import timezone

from apps.orders.models import Order
from apps.payments.models import Payment, TccBranch, TccTransaction
from apps.payments.services import tcc_recover
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


def test_a_payer_killed_before_the_bank_saw_anything_is_cancelled_by_recovery(
    acquirer, channels, shopper, order
):
    # Given a payer killed while its wallet freeze was the last thing it did
    payer = django_process(
        "import os, signal\n"
        "from apps.payments.services import coordinator\n"
        "coordinator._succeed = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"coordinator.payment_pay(order_id={order.id}, user_id={shopper.id}, method='wallet')\n",
    )
    payer.wait(timeout=60)
    tcc = TccTransaction.objects.get(order_id=order.id)
    assert tcc.status == "trying"
    from apps.payments.models import Account

    wallet = Account.objects.get(key=f"wallet:{shopper.id}:EUR")
    assert (wallet.available, wallet.frozen) == (7000, 3000)  # frozen, never captured

    # Then recovery presumes abort: the money is unfrozen and the order payable again
    TccTransaction.objects.filter(id=tcc.id).update(next_retry_at=timezone.now())
    assert tcc_recover() == {"cancelled": 1}
    wallet.refresh_from_db()
    assert (wallet.available, wallet.frozen) == (10_000, 0)
    order_now = Order.objects.using(shard_for_id(order.id)).get(id=order.id)
    assert (order_now.status, order_now.payment_started_at) == ("pending_payment", None)
    assert (
        Payment.objects.using(shard_for_id(tcc.payment_id)).get(id=tcc.payment_id).status
        == "failed"
    )
    assert_invariants_hold()
