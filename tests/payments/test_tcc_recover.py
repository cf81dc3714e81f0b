"""The recovery job: one transaction that cannot be driven does not hold up the others."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.orders.models import Order
from apps.payments.models import Account, Payment, TccTransaction
from apps.payments.services import coordinator, tcc_recover
from shop.sharding import shard_for_id
from shop.sharding.ids import id_generate, id_logical_shard
from tests.orders.conftest import assert_invariants_hold

pytestmark = [pytest.mark.needs_postgres, pytest.mark.django_db(databases="__all__")]


def test_a_broken_transaction_is_retried_later_and_the_healthy_one_is_still_driven(
    shopper, order, settings
):
    # Given a healthy payment left half-way by a payer that died after its first transaction
    # (the order's try): overdue, so recovery adopts it (presumed abort)
    alias = shard_for_id(order.id)
    started = coordinator._wallet_order_try(order_id=order.id, user_id=shopper.id, on_started=None)
    Payment.objects.using(alias).filter(id=started.id).update(
        updated_at=timezone.now() - timedelta(seconds=settings.TCC_TRYING_TIMEOUT + 1)
    )
    # and, due before it, a broken one whose payment row does not exist
    ghost_payment = id_generate(alias=alias, logical=id_logical_shard(order.id))
    broken = TccTransaction.objects.create(
        xid=f"pay-{ghost_payment}",
        payment_id=ghost_payment,
        order_id=order.id,
        user_id=shopper.id,
        status=TccTransaction.Status.CONFIRMING,
        next_retry_at=timezone.now() - timedelta(minutes=5),
    )

    # When the recovery job runs
    counts = tcc_recover()
    healthy = TccTransaction.objects.get(payment_id=started.id)

    # Then the healthy one is finished (presumed abort: the wallet was never touched)
    assert counts == {"retry": 1, "cancelled": 1}
    assert TccTransaction.objects.get(id=healthy.id).status == "cancelled"
    wallet = Account.objects.get(key=f"wallet:{shopper.id}:EUR")
    assert (wallet.available, wallet.frozen) == (10_000, 0)
    assert Order.objects.using(alias).get(id=order.id).status == "pending_payment"
    assert Payment.objects.using(alias).get(id=healthy.payment_id).status == "failed"
    # and the broken one backs off instead of coming first in every run
    broken_now = TccTransaction.objects.get(id=broken.id)
    assert broken_now.status == "confirming"
    assert broken_now.attempts == 1
    assert broken_now.next_retry_at > timezone.now()
    assert broken_now.last_error.startswith("DoesNotExist")
    assert tcc_recover() == {}  # nothing due until its retry time
    assert_invariants_hold()
