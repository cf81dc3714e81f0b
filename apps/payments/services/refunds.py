"""Refunds, full or partial, through the payment's original channel (or back to the wallet).

A refund is first recorded `pending` under a lock on its payment (so refunds never exceed
what was captured), then sent to the channel with our refund id as its idempotency key, then
posted to the ledger and the order moved to `partially_refunded` / `refunded`. Every step is
idempotent; a refund left `pending` by a failure is finished by :func:`refunds_retry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.orders import services as orders
from apps.orders.exceptions import InvalidOrderState, OrderNotFound
from apps.orders.models import Order
from apps.payments.exceptions import RefundInvalid, RefundNotAllowed
from apps.payments.models import Payment, PaymentStatus, Refund
from apps.payments.services import ledger
from apps.payments.services.channels import ChannelClient, ChannelError, ChannelRejected
from shop.sharding import order_shard_aliases, shard_for_id
from shop.sharding.ids import id_generate, id_is_plausible, id_logical_shard

logger = logging.getLogger(__name__)

REFUNDABLE = {
    orders.S.PAID,
    orders.S.PROCESSING,
    orders.S.FULFILLED,
    orders.S.PARTIALLY_REFUNDED,
}


def refund_create(
    *,
    order_id: int,
    amount: int,
    actor: str,
    owner_id: int | None = None,
    on_created: Callable[[Refund], None] | None = None,
) -> Refund:
    """Refund ``amount`` of a paid order. Returns the refund: `succeeded`, `pending` (the
    channel is unavailable; retried) or `failed` (the channel refused)."""
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    alias = shard_for_id(order_id)
    with transaction.atomic(using=alias):
        order = Order.objects.using(alias).select_for_update().filter(id=order_id).first()
        if order is None or (owner_id is not None and order.user_id != owner_id):
            raise OrderNotFound()
        if order.status not in REFUNDABLE:
            raise RefundNotAllowed(
                f"An order that is {order.status.replace('_', ' ')} has nothing to refund.",
                extra={"status": order.status},
            )
        payment = (
            Payment.objects.using(alias)
            .select_for_update()
            .filter(order=order, status=PaymentStatus.SUCCEEDED)
            .first()
        )
        if payment is None:
            raise RefundNotAllowed("This order has no captured payment to refund.")
        committed = (
            Refund.objects.using(alias)
            .filter(payment=payment)
            .exclude(status=Refund.Status.FAILED)
            .aggregate(total=Sum("amount"))["total"]
            or 0
        )
        if (
            not isinstance(amount, int)
            or amount <= 0
            or committed + amount > payment.captured_amount
        ):
            raise RefundInvalid(
                f"At most {payment.captured_amount - committed} can still be refunded.",
                extra={"fields": {"amount": ["Too much, or not a positive whole number."]}},
            )
        refund = Refund.objects.using(alias).create(
            id=id_generate(alias=alias, logical=id_logical_shard(order_id)),
            payment=payment,
            user_id=order.user_id,
            amount=amount,
        )
        if on_created is not None:
            on_created(refund)
    refund_execute(refund_id=refund.id, actor=actor)
    return Refund.objects.using(alias).get(id=refund.id)


def refund_execute(*, refund_id: int, actor: str = "system") -> str:
    """Send a pending refund to its channel and settle it. Idempotent; returns its status."""
    alias = shard_for_id(refund_id)
    refund = Refund.objects.using(alias).select_related("payment").get(id=refund_id)
    if refund.status != Refund.Status.PENDING:
        return refund.status
    payment = refund.payment
    if payment.method == "card":
        try:
            ChannelClient(payment.channel).refund(
                payment_id=payment.id, refund_id=refund.id, amount=refund.amount
            )
        except ChannelRejected as exc:
            Refund.objects.using(alias).filter(id=refund.id, status=Refund.Status.PENDING).update(
                status=Refund.Status.FAILED, failure_detail=str(exc)[:300]
            )
            return Refund.Status.FAILED
        except ChannelError as exc:
            logger.warning("refund %s waits for %s: %s", refund.id, payment.channel, exc)
            return Refund.Status.PENDING
    ledger.refund_post(
        method=payment.method,
        channel=payment.channel,
        user_id=payment.user_id,
        amount=refund.amount,
        currency=payment.currency,
        reference=f"refund-{refund.id}",
    )
    with transaction.atomic(using=alias):
        done = (
            Refund.objects.using(alias)
            .filter(id=refund.id, status=Refund.Status.PENDING)
            .update(status=Refund.Status.SUCCEEDED, updated_at=timezone.now())
        )
        if not done:
            return Refund.objects.using(alias).get(id=refund.id).status
        locked = Payment.objects.using(alias).select_for_update().get(id=payment.id)
        refunded = locked.refunded_amount + refund.amount
        Payment.objects.using(alias).filter(id=payment.id).update(
            refunded_amount=refunded, updated_at=timezone.now()
        )
        order = Order.objects.using(alias).get(id=payment.order_id)
        try:
            orders.order_record_refund(
                order=order,
                fully=refunded >= locked.captured_amount,
                actor=actor,
                reason=f"refund {refund.id} of {refund.amount}",
            )
        except InvalidOrderState:
            logger.warning("order %s refunded but stays %s", order.id, order.status)
    return Refund.Status.SUCCEEDED


def refunds_retry(*, older_than_seconds: int = 30, limit: int = 100) -> int:
    """Finish refunds left pending (the channel was down). Returns how many settled."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    settled = 0
    for alias in order_shard_aliases():
        for refund_id in (
            Refund.objects.using(alias)
            .filter(status=Refund.Status.PENDING, created_at__lt=cutoff)
            .values_list("id", flat=True)[:limit]
        ):
            settled += refund_execute(refund_id=refund_id) == Refund.Status.SUCCEEDED
    return settled
