"""Storefront: the payment page of an order."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from apps.orders.selectors import order_get
from apps.payments import selectors, services
from apps.payments.models import PaymentChannel
from apps.payments.services.coordinator import METHODS
from shop.errors import ShopError
from shop.idempotency import (
    IdempotencyConflict,
    IdempotencyMismatch,
    Replay,
    form_key,
    idempotency_begin,
    request_fingerprint,
)
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
