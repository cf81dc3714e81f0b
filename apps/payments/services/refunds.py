"""Refunds, full or partial, through the payment's original channel (or back to the wallet).

Refunding is an operator's decision (permission ``payments.refund_payment``), or part of a
buyer's cancel of a paid order (:mod:`apps.payments.services.cancellation`). A refund is first
recorded `pending`, with who decided it and why, under a lock on its order and payment (so
refunds never exceed what was captured), then sent to the channel with our refund id as its
idempotency key, then posted to the ledger (memo = the reason, actor = who) and the order moved
to `partially_refunded` / `refunded` (a cancelled order stays cancelled). Every step is
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
from shop.review import review_file
from shop.sharding import shard_for_id
from shop.sharding.ids import id_generate, id_is_plausible, id_logical_shard
from shop.sharding.loops import shards_each

logger = logging.getLogger(__name__)

REFUNDABLE = {
    orders.S.PAID,
    orders.S.PROCESSING,
    orders.S.FULFILLED,
    orders.S.PARTIALLY_REFUNDED,
}
REASON_MAX_LENGTH = 300
REFUND_FAILED_REVIEW_KIND = "refund_failed"


def operator_actor(user_id: int) -> str:
    return f"operator:{user_id}"


def buyer_actor(user_id: int) -> str:
    return f"buyer:{user_id}"


def refund_reason_clean(reason: object, *, max_length: int = REASON_MAX_LENGTH) -> str:
    """A refund's reason: required, non-blank, at most ``max_length`` characters."""
    text = reason.strip() if isinstance(reason, str) else ""
    if not text or len(text) > max_length:
        raise RefundInvalid(
            f"Say why (1 to {max_length} characters).",
            extra={"fields": {"reason": [f"Required, at most {max_length} characters."]}},
        )
    return text


def captured_payment_locked(order: Order) -> Payment | None:
    """The order's captured payment, locked for the caller's transaction on its shard."""
    return (
        Payment.objects.using(order._state.db)
        .select_for_update()
        .filter(order=order, status=PaymentStatus.SUCCEEDED)
        .first()
    )


def refundable_amount(payment: Payment) -> int:
    """What can still be refunded of a payment: captured minus every refund not failed
    (pending ones included: they are on their way)."""
    committed = (
        Refund.objects.using(payment._state.db)
        .filter(payment=payment)
        .exclude(status=Refund.Status.FAILED)
        .aggregate(total=Sum("amount"))["total"]
        or 0
    )
    return payment.captured_amount - committed


def refund_write(*, order: Order, payment: Payment, amount: int, actor: str, reason: str) -> Refund:
    """Record a pending refund of ``amount`` (inside the caller's transaction on the order's
    shard, with the order and ``payment`` locked) and note it in the order's history. Raises
    RefundInvalid when ``amount`` is not a positive whole number within what is left."""
    alias = order._state.db
    left = refundable_amount(payment)
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= left:
        raise RefundInvalid(
            f"At most {left} can still be refunded.",
            extra={"fields": {"amount": ["Too much, or not a positive whole number."]}},
        )
    refund = Refund.objects.using(alias).create(
        id=id_generate(alias=alias, logical=id_logical_shard(order.id)),
        payment=payment,
        user_id=order.user_id,
        amount=amount,
        actor=actor,
        reason=reason,
    )
    orders.order_event_record(
        order=order,
        kind="refund_started",
        actor=actor,
        reason=reason,
        data={"refund": str(refund.id), "amount": amount, "currency": payment.currency},
    )
    return refund


def refund_create(
    *,
    order_id: int,
    amount: int,
    actor: str,
    reason: str,
    on_created: Callable[[Refund], None] | None = None,
) -> Refund:
    """Refund ``amount`` of any buyer's paid order (an operator's decision: the caller checks
    the permission; ``actor`` says who, ``reason`` why). ``on_created(refund)`` runs inside the
    transaction that records it. Returns the refund: `succeeded`, `pending` (the channel is
    unavailable; retried) or `failed` (the channel refused; filed for manual review)."""
    reason = refund_reason_clean(reason)
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    alias = shard_for_id(order_id)
    with transaction.atomic(using=alias):
        order = orders.order_lock(order_id=order_id)
        if order.status not in REFUNDABLE:
            raise RefundNotAllowed(
                f"An order that is {order.status.replace('_', ' ')} has nothing to refund.",
                extra={"status": order.status},
            )
        payment = captured_payment_locked(order)
        if payment is None:
            raise RefundNotAllowed("This order has no captured payment to refund.")
        refund = refund_write(order=order, payment=payment, amount=amount, actor=actor,
                              reason=reason)  # fmt: skip
        if on_created is not None:
            on_created(refund)
    refund_execute(refund_id=refund.id)
    return Refund.objects.using(alias).get(id=refund.id)


def refund_execute(*, refund_id: int) -> str:
    """Send a pending refund to its channel and settle it, in the name of whoever decided it
    (``Refund.actor``). Idempotent; returns its status."""
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
            failed = (
                Refund.objects.using(alias)
                .filter(id=refund.id, status=Refund.Status.PENDING)
                .update(status=Refund.Status.FAILED, failure_detail=str(exc)[:300])
            )
            if failed:
                _file_failed(refund, payment, str(exc))
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
        memo=refund.reason,
        actor=refund.actor,
    )
    with transaction.atomic(using=alias):
        # Order, then payment: the order the refund's creation and a buyer's cancel lock in.
        order = orders.order_lock(order_id=payment.order_id)
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
        try:
            orders.order_record_refund(
                order=order,
                fully=refunded >= locked.captured_amount,
                actor=refund.actor or orders.SYSTEM,
                reason=refund.reason or "refunded",
            )
        except InvalidOrderState:
            logger.warning("order %s refunded but stays %s", order.id, order.status)
    return Refund.Status.SUCCEEDED


def _file_failed(refund: Refund, payment: Payment, error: str) -> None:
    """A refund the channel refused owes the buyer money: an operator must settle it."""
    review_file(
        kind=REFUND_FAILED_REVIEW_KIND,
        reference=str(refund.id),
        summary=f"Refund {refund.id} of {refund.amount} {payment.currency} for order "
        f"{payment.order_id} was refused by {payment.channel}: pay the buyer another way",
        details={
            "order": str(payment.order_id),
            "payment": str(payment.id),
            "channel": payment.channel,
            "amount": refund.amount,
            "actor": refund.actor,
            "reason": refund.reason,
            "error": error[:300],
        },
    )


def refunds_retry(*, older_than_seconds: int = 30, limit: int = 100) -> int:
    """Finish refunds left pending (the channel was down). Returns how many settled."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)

    def retry_shard(alias: str) -> int:
        pending = list(
            Refund.objects.using(alias)
            .filter(status=Refund.Status.PENDING, created_at__lt=cutoff)
            .values_list("id", flat=True)[:limit]
        )
        return sum(
            refund_execute(refund_id=refund_id) == Refund.Status.SUCCEEDED for refund_id in pending
        )

    return sum(shards_each("refunds_retry", retry_shard).values())
