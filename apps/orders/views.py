"""Storefront: cart, checkout, order pages."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.catalog.selectors import skus_for_checkout
from apps.inventory.selectors import stock_available_many
from apps.orders import selectors
from apps.orders.cart import Cart
from apps.orders.checkout import checkout_submit
from shop.errors import PageNotFound, ShopError
from shop.idempotency import (
    IdempotencyConflict,
    IdempotencyMismatch,
    form_key,
    request_fingerprint,
)
from shop.parsing import ParseRefused, parse_int, parse_page


def _quantity(value: str | None) -> int | None:
    """A quantity typed into a storefront form: a whole number (capped later at
    ORDER_LINE_MAX_QUANTITY), or None for anything else — the form says so, nothing changes."""
    try:
        return parse_int((value or "").strip())
    except ParseRefused:
        return None


def _csrf_ok(request: HttpRequest) -> bool:
    """The CSRF check, for views that must also accept anonymous readers of a shared page.

    A shared (cached) product page carries no CSRF token, and is only ever shown to a browser
    without a session. Such a browser has no session to attack, so its add-to-cart is let
    through; as soon as a session exists the token is required as everywhere else.
    """
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return True
    return CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {}) is None


@csrf_exempt
@require_POST
def cart_add(request: HttpRequest) -> HttpResponse:
    if not _csrf_ok(request):
        return render(
            request,
            "errors/shop_error.html",
            {"status": 403, "code": "csrf", "detail": "Please reload the page and try again."},
            status=403,
        )
    code = request.POST.get("sku", "")
    quantity = _quantity(request.POST.get("quantity") or "1")
    if quantity is None or quantity < 1:
        messages.error(request, "Please choose how many you want (a whole number).")
        return redirect("cart")
    sku = skus_for_checkout([code]).get(code)
    if sku is None or not sku.sellable:
        messages.error(request, "That item is not for sale.")
        return redirect("cart")
    try:
        total = Cart(request.session).add(code, quantity)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Added to your cart: {sku.name} (now {total}).")
    return redirect("cart")


def _cart_lines(cart: Cart) -> tuple[list[dict[str, Any]], int, str | None]:
    items = cart.items
    skus = skus_for_checkout(items)
    available = stock_available_many([sku.id for sku in skus.values()])
    lines, total, currency = [], 0, None
    for code, quantity in items.items():
        sku = skus.get(code)
        line = {"code": code, "quantity": quantity, "sku": sku}
        if sku is not None and sku.sellable:
            line.update(line_total=sku.price * quantity, available=available.get(sku.id, 0))
            total += sku.price * quantity
            currency = currency or sku.currency
        lines.append(line)
    return lines, total, currency


def cart_view(request: HttpRequest) -> HttpResponse:
    cart = Cart(request.session)
    lines, total, currency = _cart_lines(cart)
    return render(
        request,
        "orders/cart.html",
        {
            "lines": lines,
            "total": total,
            "currency": currency,
            "max_quantity": settings.ORDER_LINE_MAX_QUANTITY,
            # One key per rendered checkout form: a double click places one order.
            "checkout_key": uuid.uuid4().hex,
        },
    )


@require_POST
def cart_update(request: HttpRequest) -> HttpResponse:
    cart = Cart(request.session)
    for code in list(cart.items):
        if f"remove-{code}" in request.POST:
            cart.set(code, 0)
        elif f"quantity-{code}" in request.POST:
            quantity = _quantity(request.POST.get(f"quantity-{code}"))
            if quantity is None:
                messages.error(request, "Quantities are whole numbers; that line was left as is.")
                continue
            cart.set(code, quantity)
    return redirect("cart")


@login_required
@require_POST
def checkout(request: HttpRequest) -> HttpResponse:
    cart = Cart(request.session)
    if not len(cart):
        messages.error(request, "Your cart is empty.")
        return redirect("cart")
    items = cart.as_order_items()
    key = form_key(request.POST.get("checkout_key"))
    try:
        outcome = checkout_submit(
            user_id=request.user.id,
            items=items,
            key=f"storefront-checkout:{key}",
            fingerprint=request_fingerprint(method="POST", path=request.path, body=items),
            order_body=lambda order: {"id": str(order.id)},
            ticket_body=lambda ticket: {"ticket": str(ticket.id)},
            remember_refusals=False,
        )
    except IdempotencyConflict:
        messages.info(request, "Your order is being placed — one moment.")
        return redirect("order-list")
    except IdempotencyMismatch:
        messages.info(request, "Your cart changed meanwhile; please check it and try again.")
        return redirect("cart")
    except ShopError as exc:
        messages.error(request, exc.message)
        return redirect("cart")
    body = outcome.body
    if outcome.replayed:  # the same form submitted twice: show the first outcome
        if body.get("ticket"):
            return redirect("checkout-ticket", ticket_id=body["ticket"])
        return redirect("order-detail", order_id=body["id"]) if body.get("id") else redirect("cart")
    cart.clear()
    if outcome.status == 202:  # queued (a flash sale, or a busy shop): the waiting page
        return redirect("checkout-ticket", ticket_id=body["ticket"])
    messages.success(request, "Your items are reserved. Please pay before the timer runs out.")
    return redirect("order-detail", order_id=body["id"])


@login_required
def checkout_ticket(request: HttpRequest, ticket_id: int) -> HttpResponse:
    """The waiting page of a queued checkout; it refreshes itself until the outcome is known."""
    ticket = selectors.ticket_get(ticket_id=ticket_id, user_id=request.user.id)
    if ticket is None:
        raise Http404("No such checkout.")
    if ticket.status == ticket.Status.ACCEPTED:
        messages.success(request, "You got it! Your items are reserved — please pay now.")
        return redirect("order-pay", order_id=ticket.order_id)
    return render(
        request,
        "orders/ticket.html",
        {"ticket": ticket, "position": selectors.ticket_position(ticket)},
    )


def actor_label(actor: str, *, user_id: int) -> str:
    """Who did something, as the buyer may read it: never an operator's id or name."""
    if actor in (f"user:{user_id}", f"buyer:{user_id}"):
        return "You"
    if actor.startswith("operator:"):
        return "The shop"
    return "Automatically"


@login_required
def order_detail(request: HttpRequest, order_id: int) -> HttpResponse:
    user_id = request.user.id
    order = selectors.order_get(order_id=order_id, user_id=user_id)
    if order is None:
        raise Http404("No such order.")
    events = [
        {
            "created_at": event.created_at,
            "kind": event.kind.replace("_", " "),
            "from_status": event.from_status,
            "to_status": event.to_status,
            "by": actor_label(event.actor, user_id=user_id),
            "reason": event.reason,
        }
        for event in selectors.order_events(order)
    ]
    refund_requests = list(order.refund_requests.all())
    captured = [p for p in order.payments.all() if p.status == "succeeded"]
    return render(
        request,
        "orders/order_detail.html",
        {
            "order": order,
            "events": events,
            "refund_requests": refund_requests,
            "refund_request_open": any(r.status == "requested" for r in refund_requests),
            "refund_left": sum(p.captured_amount - p.refunded_amount for p in captured),
            # One key per rendered form: a double click cancels (and refunds) once.
            "cancel_key": uuid.uuid4().hex,
            "refund_key": uuid.uuid4().hex,
        },
    )


@login_required
def order_list(request: HttpRequest) -> HttpResponse:
    """A page that is not a page number, or past the last one, is the friendly 404."""
    try:
        page = selectors.orders_for_user(
            user_id=request.user.id, page=parse_page(request.GET.get("page"))
        )
    except (ParseRefused, PageNotFound) as exc:
        raise Http404("No such page.") from exc
    return render(request, "orders/order_list.html", {"page": page})
