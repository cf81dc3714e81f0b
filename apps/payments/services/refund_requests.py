"""Refund requests: once an order is being prepared (or has shipped) the buyer can no longer
cancel it, but may ask for a refund; an operator approves it (the refund runs) or declines it
with a note the buyer sees.

At most one request per order is open at a time (a partial unique index). Filing one also
files a manual-review item (kind ``refund_request``) through the outbox, so it cannot be lost;
deciding it closes that item. Decisions are conditional UPDATEs on ``status = 'requested'``,
so two operators deciding at once end with one decision and at most one refund.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from apps.orders import services as orders
from apps.orders.exceptions import OrderNotFound
from apps.payments.exceptions import (
    RefundInvalid,
    RefundNotAllowed,
    RefundRequestDecided,
    RefundRequestNotFound,
    RefundRequestOpen,
)
from apps.payments.models import Refund, RefundRequest
from apps.payments.services.refunds import (
    captured_payment_locked,
    operator_actor,
    refund_create,
    refund_reason_clean,
    refundable_amount,
)
from shop.outbox import outbox_enqueue
from shop.review import review_close, review_file
from shop.sharding import shard_for_id
from shop.sharding.ids import id_generate, id_is_plausible, id_logical_shard

logger = logging.getLogger(__name__)

S = orders.S
R = RefundRequest.Status
REVIEW_KIND = "refund_request"
REVIEW_TASK = "apps.payments.tasks.refund_request_review_file"
REQUEST_REASON_MAX_LENGTH = 500
DECISION_NOTE_MAX_LENGTH = 500
REQUESTABLE = {S.PROCESSING, S.FULFILLED, S.PARTIALLY_REFUNDED}
_NOT_REQUESTABLE = {
    S.PENDING_PAYMENT: "This order is not paid yet: pay for it, or cancel it.",
    S.PAID: "This order is not being prepared yet: cancel it instead, and the whole amount is "
    "refunded at once.",
}


def refund_request_file(
    *,
    order_id: int,
    user_id: int,
    reason: str,
    amount: int | None = None,
    on_created: Callable[[RefundRequest], None] | None = None,
) -> RefundRequest:
    """The buyer asks for a refund of ``amount`` (None: all that is left) of their processing,
    fulfilled or partially refunded order. ``on_created(request)`` runs inside the transaction
    that records it.

    Raises OrderNotFound (not the buyer's order), RefundNotAllowed (``invalid_state``: any
    other status, or nothing left to refund), RefundInvalid (reason or amount) or
    RefundRequestOpen (one is already waiting for an answer)."""
    reason = refund_reason_clean(reason, max_length=REQUEST_REASON_MAX_LENGTH)
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    alias = shard_for_id(order_id)
    with transaction.atomic(using=alias):
        order = orders.order_lock(order_id=order_id, owner_id=user_id)
        if order.status not in REQUESTABLE:
            raise RefundNotAllowed(
                _NOT_REQUESTABLE.get(
                    order.status,
                    f"There is nothing to refund for an order that is "
                    f"{order.status.replace('_', ' ')}.",
                ),
                extra={"status": order.status},
            )
        payment = captured_payment_locked(order)
        left = refundable_amount(payment) if payment is not None else 0
        if left <= 0:
            raise RefundNotAllowed(
                "Everything paid for this order has been refunded already.",
                extra={"status": order.status},
            )
        if amount is None:
            amount = left
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= left:
            raise RefundInvalid(
                f"At most {left} can be refunded.",
                extra={"fields": {"amount": [f"A whole number from 1 to {left}."]}},
            )
        if RefundRequest.objects.using(alias).filter(order=order, status=R.REQUESTED).exists():
            raise RefundRequestOpen()
        try:
            with transaction.atomic(using=alias):  # the partial unique index has the last word
                request = RefundRequest.objects.using(alias).create(
                    id=id_generate(alias=alias, logical=id_logical_shard(order.id)),
                    order=order,
                    user_id=order.user_id,
                    amount=amount,
                    reason=reason,
                )
        except IntegrityError as exc:
            raise RefundRequestOpen() from exc
        orders.order_event_record(
            order=order,
            kind="refund_requested",
            actor=orders.user_actor(user_id),
            reason=reason,
            data={"request": str(request.id), "amount": amount},
        )
        # The review item lives on `default`: queued with the request, so it cannot be lost.
        outbox_enqueue(
            using=alias,
            user_id=order.user_id,
            task=REVIEW_TASK,
            kwargs={"request_id": str(request.id)},
            queue=settings.PAYMENTS_QUEUE,
        )
        if on_created is not None:
            on_created(request)
    try:
        refund_request_review_file(request_id=request.id)
    except DatabaseError:
        logger.exception("refund request %s: review item not filed yet (outbox)", request.id)
    return request


def refund_request_review_file(*, request_id: int) -> bool:
    """File the operators' review item of a request still waiting for an answer (idempotent:
    one open item per request; nothing for a request already decided). True if filed now."""
    request = _request_get(request_id)
    if request.status != R.REQUESTED:
        return False
    _, filed = review_file(
        kind=REVIEW_KIND,
        reference=str(request.id),
        summary=f"Order {request.order_id}: the buyer asks for a refund of {request.amount} "
        f"{request.order.currency}: {request.reason[:150]}",
        details={
            "order": str(request.order_id),
            "amount": request.amount,
            "currency": request.order.currency,
            "reason": request.reason,
            "shard": request._state.db,
            "decide": reverse("admin:payments_refundrequest_change", args=[request.id]),
        },
    )
    return filed


def _request_get(request_id: int) -> RefundRequest:
    if not id_is_plausible(request_id):
        raise RefundRequestNotFound()
    request = (
        RefundRequest.objects.using(shard_for_id(request_id))
        .select_related("order")
        .filter(id=request_id)
        .first()
    )
    if request is None:
        raise RefundRequestNotFound()
    return request


def refund_request_approve(*, request_id: int, operator: AbstractBaseUser) -> RefundRequest:
    """Approve a request: its amount is refunded (:func:`refund_create`, in the operator's name,
    for the buyer's reason) and the request becomes `approved` with the refund's id, in the
    refund's own transaction; the review item is closed. Idempotent (approving an approved
    request changes nothing). Raises RefundRequestDecided (it was declined), or
    RefundNotAllowed / RefundInvalid when the order can no longer be refunded that much (the
    request then stays open: decline it)."""
    request = _request_get(request_id)
    alias = request._state.db
    actor = operator_actor(operator.pk)
    if request.status == R.REQUESTED:

        def approve(refund: Refund) -> None:  # inside the refund's transaction
            approved = (
                RefundRequest.objects.using(alias)
                .filter(id=request.id, status=R.REQUESTED)
                .update(
                    status=R.APPROVED,
                    refund_id=refund.id,
                    decided_by=actor,
                    decided_at=timezone.now(),
                    updated_at=timezone.now(),
                )
            )
            if not approved:  # another operator decided it first: no second refund
                raise RefundRequestDecided()
            orders.order_event_record(
                order=orders.order_lock(order_id=request.order_id),
                kind="refund_request_approved",
                actor=actor,
                reason=request.reason,
                data={"request": str(request.id), "amount": request.amount},
            )

        # Decided by another operator meanwhile: their decision stands (read below).
        with contextlib.suppress(RefundRequestDecided):
            refund_create(
                order_id=request.order_id,
                amount=request.amount,
                actor=actor,
                reason=request.reason,
                on_created=approve,
            )
        request = _request_get(request_id)
    if request.status != R.APPROVED:
        raise RefundRequestDecided("This refund request was declined.")
    _close_review(request, operator=operator, note=f"approved: refund {request.refund_id}")
    return request


def refund_request_decline(
    *, request_id: int, operator: AbstractBaseUser, note: str
) -> RefundRequest:
    """Decline a request with ``note`` (required; the buyer sees it) and close its review
    item. Idempotent (declining a declined request changes nothing). Raises
    RefundRequestDecided (it was approved) or RefundInvalid (no note)."""
    note = _note_clean(note)
    request = _request_get(request_id)
    alias = request._state.db
    actor = operator_actor(operator.pk)
    if request.status == R.REQUESTED:
        with transaction.atomic(using=alias):
            order = orders.order_lock(order_id=request.order_id)
            declined = (
                RefundRequest.objects.using(alias)
                .filter(id=request.id, status=R.REQUESTED)
                .update(
                    status=R.DECLINED,
                    decision_note=note,
                    decided_by=actor,
                    decided_at=timezone.now(),
                    updated_at=timezone.now(),
                )
            )
            if declined:
                orders.order_event_record(
                    order=order,
                    kind="refund_request_declined",
                    actor=actor,
                    reason=note,
                    data={"request": str(request.id)},
                )
        request = _request_get(request_id)
    if request.status != R.DECLINED:
        raise RefundRequestDecided("This refund request was approved.")
    _close_review(request, operator=operator, note=f"declined: {request.decision_note}")
    return request


def _note_clean(note: object) -> str:
    text = note.strip() if isinstance(note, str) else ""
    if not text or len(text) > DECISION_NOTE_MAX_LENGTH:
        raise RefundInvalid(
            f"Tell the buyer why (1 to {DECISION_NOTE_MAX_LENGTH} characters).",
            extra={"fields": {"note": ["Required."]}},
        )
    return text


def _close_review(request: RefundRequest, *, operator: AbstractBaseUser, note: str) -> None:
    try:
        review_close(kind=REVIEW_KIND, references=[str(request.id)], operator=operator, note=note)
    except DatabaseError:
        # The decision stands (on the order's shard); the item shows it was decided.
        logger.exception("refund request %s decided; its review item is still open", request.id)
