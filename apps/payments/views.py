"""Storefront: the payment page of an order, the buyer's cancel (a paid order is refunded)
and refund requests."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from apps.orders.selectors import order_get
from apps.payments import selectors, services
from apps.payments.models import PaymentChannel
from apps.payments.services.coordinator import METHODS
from shop.errors import ShopError
from shop.idempotency import (
    IdempotencyClaim,
    IdempotencyConflict,
    IdempotencyMismatch,
    Replay,
    form_key,
    idempotency_begin,
    request_fingerprint,
)
from shop.parsing import ParseRefused, parse_int
from shop.sharding import shard_for_user

FAILURES = {
    "insufficient_funds": "Your wallet does not hold enough money for this order.",
    "payment_declined": "Your bank declined the payment.",
    "no_channel_available": "No card payment channel is available right now.",
}


@login_required
@require_http_methods(["GET", "POST"])
def order_pay(request: HttpRequest, order_id: int) -> HttpResponse:
    order = order_get(order_id=order_id, user_id=request.user.id)
    if order is None:
        raise Http404("No such order.")
    if request.method == "POST":
        return _pay(request, order_id)
    return render(
        request,
        "payments/pay.html",
        {
            "order": order,
            "wallet": selectors.wallet_get(user_id=request.user.id, currency=order.currency),
            "channels": PaymentChannel.objects.filter(enabled=True),
            "payments": list(order.payments.all()),
            "pay_key": uuid.uuid4().hex,
        },
    )


def _pay(request: HttpRequest, order_id: int) -> HttpResponse:
    method = request.POST.get("method", "")
    if method not in METHODS:
        messages.error(request, "Choose how to pay.")
        return redirect("order-pay", order_id=order_id)
    user_id = request.user.id
    key = form_key(request.POST.get("pay_key"))
    try:
        claim = idempotency_begin(
            using=shard_for_user(user_id),
            user_id=user_id,
            key=f"storefront-pay:{key}",
            fingerprint=request_fingerprint(
                method="POST", path=request.path, body={"method": method}
            ),
        )
    except (IdempotencyConflict, IdempotencyMismatch):
        messages.info(request, "Your payment is being processed — one moment.")
        return redirect("order-detail", order_id=order_id)
    if isinstance(claim, Replay):
        return redirect("order-detail", order_id=order_id)
    try:
        # A retry after a crash shows the payment the first request started.
        payment_id = claim.resume_or_start(
            lambda attach: services.payment_pay(
                order_id=order_id,
                user_id=user_id,
                method=method,
                on_started=lambda payment: attach(str(payment.id)),
            )
        )
    except ShopError as exc:
        claim.release()
        messages.error(request, exc.message)
        return redirect("order-detail", order_id=order_id)
    payment = selectors.payment_get(payment_id=int(payment_id))
    claim.remember(status=201, body={"id": str(payment.id), "status": payment.status})
    if payment.status == "succeeded":
        messages.success(request, "Paid — thank you! We are preparing your order.")
        return redirect("order-detail", order_id=order_id)
    if payment.status == "failed":
        messages.error(
            request,
            FAILURES.get(payment.failure_code, "The payment failed.")
            + " You can try again or choose another way to pay.",
        )
        return redirect("order-pay", order_id=order_id)
    messages.info(request, "Your bank has not confirmed yet; this page will show the outcome.")
    return redirect("order-detail", order_id=order_id)


def _claim(
    request: HttpRequest, *, order_id: int, purpose: str, key: str, body: object
) -> IdempotencyClaim | HttpResponse:
    """The idempotency claim of one rendered form (its hidden key), or where to send a
    duplicate submission (a double click, or the same form still being handled)."""
    user_id = request.user.id
    try:
        outcome = idempotency_begin(
            using=shard_for_user(user_id),
            user_id=user_id,
            key=f"storefront-{purpose}:{key[:200] or uuid.uuid4().hex}",
            fingerprint=request_fingerprint(method="POST", path=request.path, body=body),
        )
    except (IdempotencyConflict, IdempotencyMismatch):
        messages.info(request, "We are on it — one moment.")
        return redirect("order-detail", order_id=order_id)
    if isinstance(outcome, Replay):  # the same form sent twice: the first outcome stands
        return redirect("order-detail", order_id=order_id)
    return outcome


def _run_claimed(
    request: HttpRequest, claim: IdempotencyClaim, order_id: int, action: Callable[[], object]
) -> HttpResponse | None:
    """Run a buyer's order action under its form's idempotency claim. None when it went
    through; a refusal (ShopError) gives the key back and answers with the order page and the
    reason (404 for an order that is not theirs); anything else gives the key back and
    propagates."""
    try:
        action()
    except ShopError as exc:
        claim.release()
        if exc.http_status == 404:
            raise Http404("No such order.") from exc
        messages.error(request, exc.message)
        return redirect("order-detail", order_id=order_id)
    except BaseException:
        with contextlib.suppress(DatabaseError):
            claim.release()
        raise
    return None


@login_required
@require_POST
def order_cancel(request: HttpRequest, order_id: int) -> HttpResponse:
    """Cancel an unpaid order, or a paid one not yet in fulfilment (refunded in full)."""
    user_id = request.user.id
    claim = _claim(
        request, order_id=order_id, purpose="cancel", key=request.POST.get("cancel_key", ""),
        body={},
    )  # fmt: skip
    if isinstance(claim, HttpResponse):
        return claim
    refused = _run_claimed(
        request,
        claim,
        order_id,
        lambda: claim.resume_or_start(
            lambda attach: services.order_cancel_by_buyer(
                order_id=order_id,
                user_id=user_id,
                on_cancelled=lambda order: attach(str(order.id)),
            )
        ),
    )
    if refused is not None:
        return refused
    claim.remember(status=200, body={"id": str(order_id)})
    order = order_get(order_id=order_id, user_id=user_id)
    paid = [p for p in order.payments.all() if p.status == "succeeded"]
    if paid:
        where = "your wallet" if paid[0].method == "wallet" else "your card"
        messages.success(request, f"Order cancelled. The full amount is being refunded to {where}.")
    else:
        messages.success(request, "Order cancelled; the items are back on sale.")
    return redirect("order-detail", order_id=order_id)


_AMOUNT = re.compile(r"^(\d{1,12})(?:[.,](\d{1,2}))?$")


def _amount_minor(text: str) -> int | None:
    """An amount typed in the order's currency ("12", "12.5", "12,50") as minor units; None
    when left empty. Raises ParseRefused for anything else."""
    text = text.strip()
    if not text:
        return None
    match = _AMOUNT.match(text)
    if match is None:
        raise ParseRefused("not an amount")
    whole = parse_int(match.group(1))
    cents = parse_int((match.group(2) or "0").ljust(2, "0"))
    return whole * 100 + cents


@login_required
@require_POST
def order_refund_request(request: HttpRequest, order_id: int) -> HttpResponse:
    """Ask for a refund of a processing or fulfilled order (the shop answers on the page)."""
    user_id = request.user.id
    reason = request.POST.get("reason", "")
    try:
        amount = _amount_minor(request.POST.get("amount", ""))
    except ParseRefused:
        messages.error(request, "Enter the amount like 12.50, or leave it empty.")
        return redirect("order-detail", order_id=order_id)
    claim = _claim(
        request, order_id=order_id, purpose="refund-request",
        key=request.POST.get("refund_key", ""), body={"reason": reason, "amount": amount},
    )  # fmt: skip
    if isinstance(claim, HttpResponse):
        return claim
    refused = _run_claimed(
        request,
        claim,
        order_id,
        lambda: services.refund_request_file(
            order_id=order_id,
            user_id=user_id,
            reason=reason,
            amount=amount,
            on_created=lambda r: claim.complete(status=201, body={"id": str(r.id)}),
        ),
    )
    if refused is not None:
        return refused
    messages.success(request, "Thank you — we will look at your request and answer here.")
    return redirect("order-detail", order_id=order_id)
