from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from apps.orders import checkout, selectors
from apps.orders.exceptions import OrderNotFound
from apps.orders.models import CheckoutTicket, Order
from shop.authentication import request_token_user
from shop.errors import NotFound, ShopError, render_error
from shop.idempotency import HEADER, HEADER_META, REPLAY_HEADER, request_fingerprint, validate_key
from shop.parsers import PageField, StrictIntegerField, body_bounded
from shop.parsing import ParseRefused, json_loads_bounded
from shop.throttle import LIMITS_IN_VIEW, limits_check, request_limit_layers

IDEMPOTENCY_PARAMETER = OpenApiParameter(
    HEADER, str, OpenApiParameter.HEADER, required=True, description="1-255 printable characters"
)


class OrderLineOutputSerializer(serializers.Serializer):
    sku = serializers.CharField(source="sku_code")
    name = serializers.CharField()
    unit_price = serializers.IntegerField()
    quantity = serializers.IntegerField()
    line_total = serializers.IntegerField()


class OrderOutputSerializer(serializers.Serializer):
    # 64-bit ids travel as strings: JavaScript numbers lose precision above 2**53.
    id = serializers.CharField()
    status = serializers.CharField()
    currency = serializers.CharField()
    total = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    paid_at = serializers.DateTimeField(allow_null=True)
    lines = OrderLineOutputSerializer(many=True)
    payments = serializers.SerializerMethodField()
    refund_requests = serializers.SerializerMethodField()

    def get_payments(self, order: Order) -> list[dict[str, Any]]:
        return _payments(order)

    def get_refund_requests(self, order: Order) -> list[dict[str, Any]]:
        return _refund_requests(order)


DATETIME = serializers.DateTimeField()  # how DRF writes a date and time


def _payments(order: Order) -> list[dict[str, Any]]:
    return [
        {
            "id": str(payment.id),
            "status": payment.status,
            "method": payment.method,
            "channel": payment.channel,
            "amount": payment.amount,
            "refunded_amount": payment.refunded_amount,
        }
        for payment in order.payments.all()
    ]


def _refund_requests(order: Order) -> list[dict[str, Any]]:
    # The buyer's own requests and the shop's answer; never who decided (operators'
    # identities stay internal). "refund_requests" is the reverse side of the payments
    # app's RefundRequest.order (same shard), prefetched by the selectors.
    return [
        {
            "id": str(request.id),
            "status": request.status,
            "amount": request.amount,
            "reason": request.reason,
            "decision_note": request.decision_note,
            "created_at": DATETIME.to_representation(request.created_at),
        }
        for request in order.refund_requests.all()
    ]


def order_body(order: Order) -> dict[str, Any]:
    """OrderOutputSerializer's representation of ``order``, built directly: a checkout stores
    it with its idempotency key on the hot path, where the serializer's machinery cost more
    than the rest of the body (tests/payments/test_refund_requests.py compares the two)."""
    when = DATETIME.to_representation
    return {
        "id": str(order.id),
        "status": order.status,
        "currency": order.currency,
        "total": order.total,
        "created_at": when(order.created_at),
        "expires_at": when(order.expires_at),
        "paid_at": when(order.paid_at),
        "lines": [
            {
                "sku": line.sku_code,
                "name": line.name,
                "unit_price": line.unit_price,
                "quantity": line.quantity,
                "line_total": line.line_total,
            }
            for line in order.lines.all()
        ],
        "payments": _payments(order),
        "refund_requests": _refund_requests(order),
    }


SKU_CODE_LENGTH = 64
_SURROGATES = re.compile("[\ud800-\udfff]")


class OrderItemInputSerializer(serializers.Serializer):
    sku = serializers.CharField(max_length=SKU_CODE_LENGTH)
    quantity = StrictIntegerField(min_value=1, max_value=settings.ORDER_LINE_MAX_QUANTITY)


def order_create_answer_early(request: HttpRequest) -> HttpResponse | object | None:
    """The answer to a well-formed checkout by a signed-in buyer that this process can give
    without any remote work (a flash sale it knows is sold out), before the rate limits count
    it; LIMITS_IN_VIEW for another well-formed checkout (the checkout service checks its limits:
    with the gate for a flash-sale attempt, in one GCRA call otherwise); None for anything else,
    which takes the full path (and gets its usual answer there)."""
    if request.content_type != "application/json":
        return None
    try:
        if (resolved := request_token_user(request)) is None:
            return None
        key = validate_key(request.META.get(HEADER_META))  # not request.headers: built per request
        data = json_loads_bounded(body_bounded(request))  # the API's byte bound, as DRF's parser
    except (AuthenticationFailed, DatabaseError, ShopError, ParseRefused):
        return None
    items = _items_as_validated(data)
    if items is None:
        return None
    try:  # the list of sales is re-read from the database now and then
        refusal = checkout.checkout_refused_locally(user_id=resolved[0].pk, items=items, key=key)
    except DatabaseError:
        return None  # the full path answers, as DESIGN §6 says (503)
    if refusal is not None:
        return render_error(request, refusal)
    # Any other well-formed checkout: the service checks its rate limits in one Redis call (a
    # flash-sale attempt's with the gate's own; the middleware's layers would cost two or three).
    # The view takes the body as read here instead of parsing and validating it again.
    request.checkout_read = (data, items)  # type: ignore[attr-defined]
    return LIMITS_IN_VIEW


def _items_as_validated(data: Any) -> list[dict[str, Any]] | None:
    """``data["items"]`` exactly as OrderCreateApi.InputSerializer would validate them, when it
    would accept them unchanged (no surrounding blanks to trim, no unknown keys to drop): a
    code of 1-64 characters without NUL or surrogates, a whole quantity in range, 1 to
    ORDER_MAX_LINES items. None for anything else, which the serializer then judges."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= settings.ORDER_MAX_LINES:
        return None
    for item in items:
        if not (isinstance(item, dict) and len(item) == 2):
            return None
        sku, quantity = item.get("sku"), item.get("quantity")
        if not (
            isinstance(sku, str)
            and 1 <= len(sku) <= SKU_CODE_LENGTH
            and sku == sku.strip()
            and "\x00" not in sku
            and not _SURROGATES.search(sku)
            and type(quantity) is int
            and 1 <= quantity <= settings.ORDER_LINE_MAX_QUANTITY
        ):
            return None
    return items


class OrderCreateApi(APIView):
    """Check out: reserve the items and create an order awaiting payment. Idempotent."""

    # A flash sale's refusals after its sell-out are answered by this process alone.
    answer_before_limits = staticmethod(order_create_answer_early)

    class InputSerializer(serializers.Serializer):
        # Typed, so the schema (and clients or fuzzers working from it) knows what an item is.
        items = OrderItemInputSerializer(
            many=True, min_length=1, max_length=settings.ORDER_MAX_LINES
        )

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: OrderOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        key = validate_key(request.META.get(HEADER_META))  # not request.headers: built per request
        read = getattr(request._request, "checkout_read", None)  # by the early hook, validated
        if read is not None:
            body, items = read
        else:
            body = request.data
            serializer = self.InputSerializer(data=body)
            if not serializer.is_valid():
                # The rate limits were left to this view (the early hook): a refused request
                # counts too, as the middleware would have counted it, or it would sidestep them.
                limits_check(request_limit_layers(request._request))
                raise ValidationError(serializer.errors)
            items = serializer.validated_data["items"]
        outcome = checkout.checkout_submit(
            user_id=request.user.id,
            items=items,
            key=key,
            fingerprint=request_fingerprint(method=request.method, path=request.path, body=body),
            order_body=order_body,
            ticket_body=lambda ticket: ticket_body(ticket, request),
            remember_refusals=True,
            limits=request_limit_layers(request._request),
        )
        headers = {REPLAY_HEADER: "true"} if outcome.replayed else None
        return Response(outcome.body, status=outcome.status, headers=headers)


def ticket_body(ticket: CheckoutTicket, request: Request) -> dict[str, Any]:
    return {
        "ticket": str(ticket.id),
        "status": ticket.status,
        "poll": request.build_absolute_uri(
            reverse("api-checkout-ticket", kwargs={"ticket_id": ticket.id})
        ),
    }


class CheckoutTicketDetailApi(APIView):
    """A queued checkout: `queued` (with its position when known), `accepted` (with the order)
    or `rejected` (with the reason's code)."""

    class OutputSerializer(serializers.Serializer):
        ticket = serializers.CharField()
        status = serializers.CharField()
        order = serializers.CharField(allow_null=True)
        code = serializers.CharField(allow_null=True)
        detail = serializers.CharField(allow_null=True)
        position = serializers.IntegerField(allow_null=True)

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request, ticket_id: int) -> Response:
        ticket = selectors.ticket_get(ticket_id=ticket_id, user_id=request.user.id)
        if ticket is None:
            raise NotFound("No such checkout ticket.")
        body = {
            "ticket": str(ticket.id),
            "status": ticket.status,
            "order": str(ticket.order_id) if ticket.order_id else None,
            "code": ticket.reject_code or None,
            "detail": ticket.reject_detail or None,
            "position": selectors.ticket_position(ticket),
        }
        return Response(self.OutputSerializer(body).data)


class OrderListApi(APIView):
    """The caller's orders, newest first. A page that is not a whole number 1..2**63-1 is 400
    ``validation_error``; one past the last page is 404 ``not_found``."""

    class FilterSerializer(serializers.Serializer):
        page = PageField()

    @extend_schema(responses={200: OrderOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        page = selectors.orders_for_user(
            user_id=request.user.id, page=filters.validated_data["page"]
        )
        url = request.build_absolute_uri()
        return Response(
            {
                "count": page.count,
                "next": replace_query_param(url, "page", page.page + 1) if page.has_next else None,
                "previous": replace_query_param(url, "page", page.page - 1)
                if page.page > 1
                else None,
                "results": [order_body(order) for order in page.items],
            }
        )


class OrderDetailApi(APIView):
    @extend_schema(responses={200: OrderOutputSerializer})
    def get(self, request: Request, order_id: int) -> Response:
        order = selectors.order_get(order_id=order_id, user_id=request.user.id)
        if order is None:
            raise OrderNotFound()
        return Response(order_body(order))


class OrderCollectionApi(OrderCreateApi, OrderListApi):
    """`/api/v1/orders/`: GET lists (OrderListApi), POST checks out (OrderCreateApi)."""
