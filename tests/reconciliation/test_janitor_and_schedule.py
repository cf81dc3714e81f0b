"""The stuck-payments janitor, and the nightly schedule."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.utils import timezone

from apps.orders import services as orders
from apps.payments.models import Payment, PaymentChannel
from apps.payments.services import payment_pay
from apps.reconciliation.models import ReconciliationRun
from apps.reconciliation.services import payments_stuck_janitor
from apps.reconciliation.tasks import reconcile_previous_day
from shop.models import ManualReviewItem
from shop.sharding import shard_for_id
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import assert_invariants_hold

pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases="__all__")]


def _unknown_payment(acquirer, shopper, settings, channel="alpha"):
    sku = product_with_skus(stock=5).skus.get()
    cache.clear()  # factories bypass the catalog services' invalidation
    order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
    acquirer.set_faults(channel, timeout_rate=1.0, timeout_ms=1500)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel=channel)
    assert payment.status == "unknown"
    Payment.objects.using(shard_for_id(payment.id)).filter(id=payment.id).update(
        updated_at=timezone.now() - timedelta(seconds=settings.PAYMENT_STUCK_AFTER + 1)
    )
    return payment


def test_a_stuck_payment_is_settled_from_the_banks_answer(acquirer, channels, shopper, settings):
    payment = _unknown_payment(acquirer, shopper, settings)
    acquirer.set_faults("alpha")
    time.sleep(1.6)  # the bank authorized it meanwhile

    result = payments_stuck_janitor()

    assert result.settled == [payment.id] and result.escalated == []
    assert Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id).status == "succeeded"
    assert not ManualReviewItem.objects.exists()
    assert_invariants_hold()


def test_a_payment_the_bank_cannot_answer_for_is_escalated_never_guessed(
    acquirer, channels, shopper, settings
):
    payment = _unknown_payment(acquirer, shopper, settings)
    acquirer.set_faults("alpha", outage=True)

    result = payments_stuck_janitor()

    assert result.escalated == [payment.id]
    assert Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id).status == "unknown"
    item = ManualReviewItem.objects.get(kind="stuck_payment")
    assert item.reference == str(payment.id)
    payments_stuck_janitor()  # again: still one item
    assert ManualReviewItem.objects.count() == 1


def test_a_payment_that_cannot_be_settled_is_escalated_and_the_others_still_settle(
    acquirer, channels, shopper, settings
):
    # Given two stuck payments, the older one at a bank an operator has since removed
    broken = _unknown_payment(acquirer, shopper, settings, channel="alpha")
    healthy = _unknown_payment(acquirer, shopper, settings, channel="beta")
    Payment.objects.using(shard_for_id(broken.id)).filter(id=broken.id).update(
        updated_at=timezone.now() - timedelta(seconds=settings.PAYMENT_STUCK_AFTER + 60)
    )
    acquirer.set_faults("alpha")
    acquirer.set_faults("beta")
    time.sleep(1.6)  # both banks authorized meanwhile
    PaymentChannel.objects.filter(code="alpha").delete()

    # When the janitor runs
    result = payments_stuck_janitor()

    # Then settling the broken one fails unexpectedly, it is escalated, and the next one settles
    assert result.escalated == [broken.id]
    assert result.settled == [healthy.id]
    assert Payment.objects.using(shard_for_id(healthy.id)).get(id=healthy.id).status == "succeeded"
    item = ManualReviewItem.objects.get(kind="stuck_payment")
    assert item.reference == str(broken.id)
    assert "DoesNotExist" in item.details["error"]
    assert_invariants_hold()


def test_the_nightly_job_runs_at_two_and_reconciles_yesterday_for_every_card_channel(
    acquirer, channels
):
    entry = django_settings.CELERY_BEAT_SCHEDULE["reconciliation-nightly"]
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({2}, {0})
    result = reconcile_previous_day()
    assert result == {"alpha": "completed", "beta": "completed", "gamma": "completed"}
    yesterday = timezone.localdate() - timedelta(days=1)
    assert set(ReconciliationRun.objects.values_list("business_day", flat=True)) == {yesterday}


def test_a_wallet_payment_abandoned_after_its_orders_try_is_cancelled_by_the_janitor(
    shopper, settings
):
    from apps.orders.models import Order
    from apps.payments.models import Account, TccTransaction
    from apps.payments.services import coordinator

    # Given a wallet payment whose payer died after its first transaction (the order's try):
    # pending, the order held, no TCC row — and stuck past PAYMENT_STUCK_AFTER
    sku = product_with_skus(stock=5).skus.get()
    cache.clear()  # factories bypass the catalog services' invalidation
    order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
    payment = coordinator._wallet_order_try(order_id=order.id, user_id=shopper.id, on_started=None)
    alias = shard_for_id(order.id)
    Payment.objects.using(alias).filter(id=payment.id).update(
        updated_at=timezone.now() - timedelta(seconds=settings.PAYMENT_STUCK_AFTER + 1)
    )

    # When the janitor runs, then it settles it: adopted, presumed abort, the order payable
    result = payments_stuck_janitor()
    assert (result.settled, result.escalated) == ([payment.id], [])
    payment.refresh_from_db()
    assert (payment.status, payment.failure_code) == ("failed", "abandoned")
    assert TccTransaction.objects.get(payment_id=payment.id).status == "cancelled"
    assert Order.objects.using(alias).get(id=order.id).payment_started_at is None
    wallet = Account.objects.get(key=f"wallet:{shopper.id}:EUR")
    assert (wallet.available, wallet.frozen) == (10_000, 0)
    assert not ManualReviewItem.objects.exists()
    assert_invariants_hold()
