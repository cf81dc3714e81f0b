from __future__ import annotations

from typing import Any

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orders.api import DATETIME, IDEMPOTENCY_PARAMETER, OrderOutputSerializer, order_body
from apps.orders.exceptions import OrderNotFound
from apps.orders.selectors import order_get
from apps.payments import selectors, services
from apps.payments.models import Payment, RefundRequest
from apps.payments.permissions import RefundOperatorOnly
from apps.payments.services.coordinator import METHODS
from apps.payments.services.refund_requests import REQUEST_REASON_MAX_LENGTH
from apps.payments.services.refunds import REASON_MAX_LENGTH, operator_actor
from apps.payments.services.webhooks import WebhookRejected
from shop.idempotency import Replay, idempotent_request
from shop.parsers import StrictIntegerField, body_bounded
from shop.parsing import INT64_MAX
from shop.rowwrites import RowWrite
from shop.sharding import shard_for_id, shard_for_user
from shop.sharding.ids import id_is_plausible


class AttemptOutputSerializer(serializers.Serializer):
    channel = serializers.CharField()
    outcome = serializers.CharField()
    reason = serializers.CharField()
    latency_ms = serializers.IntegerField()


class PaymentOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    order = serializers.CharField(source="order_id")
    status = serializers.CharField()
    method = serializers.CharField()
    channel = serializers.CharField()
    amount = serializers.IntegerField()
    currency = serializers.CharField()
    refunded_amount = serializers.IntegerField()
    failure_code = serializers.CharField()
    created_at = serializers.DateTimeField()
    attempts = AttemptOutputSerializer(many=True, source="attempts.all")


class RefundOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    payment = serializers.CharField(source="payment_id")
    amount = serializers.IntegerField()
    status = serializers.CharField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


class RefundRequestOutputSerializer(serializers.Serializer):
    """What the buyer sees of their request (never who decided it)."""

    id = serializers.CharField()
    order = serializers.CharField(source="order_id")
    status = serializers.CharField()
    amount = serializers.IntegerField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()


def payment_body(payment: Payment) -> dict[str, Any]:
    """PaymentOutputSerializer's representation of ``payment``, built directly: a wallet
    payment stores it with its idempotency key on the hot path (tested equal to it)."""
    return {
        "id": str(payment.id),
        "order": str(payment.order_id),
        "status": payment.status,
        "method": payment.method,
        "channel": payment.channel,
        "amount": payment.amount,
        "currency": payment.currency,
        "refunded_amount": payment.refunded_amount,
        "failure_code": payment.failure_code,
        "created_at": DATETIME.to_representation(payment.created_at),
        "attempts": [
            {
                "channel": attempt.channel,
                "outcome": attempt.outcome,
                "reason": attempt.reason,
                "latency_ms": attempt.latency_ms,
            }
            for attempt in payment.attempts.all()
        ],
    }


class PaymentCreateApi(APIView):
    """Pay an unpaid order with the wallet or a card (channel chosen by routing, or named).
    Idempotent. 201 with the payment: succeeded, failed (see failure_code), pending or unknown."""

    class InputSerializer(serializers.Serializer):
        method = serializers.ChoiceField(choices=list(METHODS))
        channel = serializers.SlugField(required=False, max_length=40)

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: PaymentOutputSerializer},
    )
    def post(self, request: Request, order_id: int) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            settled: dict[str, Any] = {}

            def on_settled(payment: Payment) -> list[RowWrite]:
                # Inside the transaction that marks the payment succeeded: the key's response
                # is stored with it (in the same statement), once that one commits.
                settled["body"] = payment_body(payment)
                transaction.on_commit(lambda: settled.update(committed=True), using=claim.using)
                return [claim.completion(status=201, body=settled["body"])]

            # A retry after a crash reports the payment the first request started (the payment
            # is attached to the key in the statement that creates it).
            payment_id = claim.resume_or_start(
                lambda _attach: services.payment_pay(
                    order_id=order_id,
                    user_id=user_id,
                    method=data["method"],
                    channel=data.get("channel"),
                    on_started=lambda payment: [claim.attachment(str(payment.id))],
                    on_settled=on_settled,
                )
            )
            if settled.get("committed"):
                return Response(settled["body"], status=201)
            body = payment_body(selectors.payment_get(payment_id=int(payment_id)))
            claim.remember(status=201, body=body)
            return Response(body, status=201)


class RefundCreateApi(APIView):
    """Operators only (active staff with ``payments.refund_payment``): refund any buyer's paid
    order in full or in part, through the channel it was paid with, saying why. Idempotent.
    Anyone else gets 403 before the order is even looked up."""

    permission_classes = [IsAuthenticated, RefundOperatorOnly]

    class InputSerializer(serializers.Serializer):
        amount = StrictIntegerField(min_value=1, max_value=INT64_MAX)
        reason = serializers.CharField(max_length=REASON_MAX_LENGTH)

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: RefundOutputSerializer},
    )
    def post(self, request: Request, order_id: int) -> Response:
        if not id_is_plausible(order_id):
            raise OrderNotFound()
        operator_id = request.user.id
        # The key is kept on the order's shard, beside the refund: the refund's own
        # transaction attaches it, so a retry after a crash resumes that very refund.
        using = shard_for_id(order_id)
        with idempotent_request(request, using=using, user_id=operator_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            # A retry after a crash reports the refund the first request started.
            refund_id = claim.resume_or_start(
                lambda attach: services.refund_create(
                    order_id=order_id,
                    amount=data["amount"],
                    actor=operator_actor(operator_id),
                    reason=data["reason"],
                    on_created=lambda refund: attach(str(refund.id)),
                )
            )
            body = RefundOutputSerializer(selectors.refund_get(refund_id=int(refund_id))).data
            claim.remember(status=201, body=body)
            return Response(body, status=201)


class OrderCancelApi(APIView):
    """The buyer cancels their order: an unpaid one (its stock is released), or a paid one not
    yet in fulfilment (refunded in full automatically, its stock back on sale). Idempotent."""

    @extend_schema(
        request=None, parameters=[IDEMPOTENCY_PARAMETER], responses={200: OrderOutputSerializer}
    )
    def post(self, request: Request, order_id: int) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            # The cancel's own transaction attaches the order to the key; a retry after a
            # crash reports that order instead of cancelling again.
            cancelled_id = claim.resume_or_start(
                lambda attach: services.order_cancel_by_buyer(
                    order_id=order_id,
                    user_id=user_id,
                    on_cancelled=lambda order: attach(str(order.id)),
                )
            )
            body = order_body(order_get(order_id=int(cancelled_id), user_id=user_id))
            claim.remember(status=200, body=body)
            return Response(body)


class RefundRequestCreateApi(APIView):
    """The buyer asks for a refund of a processing, fulfilled or partially refunded order
    (``amount`` absent: all that is left), saying why. An operator approves or declines it;
    the answer shows in the order's ``refund_requests``. Idempotent."""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=REQUEST_REASON_MAX_LENGTH)
        amount = StrictIntegerField(min_value=1, max_value=INT64_MAX, required=False)

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: RefundRequestOutputSerializer},
    )
    def post(self, request: Request, order_id: int) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            data = serializer.validated_data
            body: dict[str, Any] = {}

            def record(refund_request: RefundRequest) -> None:  # inside its transaction
                body.update(RefundRequestOutputSerializer(refund_request).data)
                claim.complete(status=201, body=body)

            services.refund_request_file(
                order_id=order_id,
                user_id=user_id,
                reason=data["reason"],
                amount=data.get("amount"),
                on_created=record,
            )
            return Response(body, status=201)


class WalletDetailApi(APIView):
    class OutputSerializer(serializers.Serializer):
        currency = serializers.CharField()
        available = serializers.IntegerField()
        frozen = serializers.IntegerField()

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request) -> Response:
        return Response(self.OutputSerializer(selectors.wallet_get(user_id=request.user.id)).data)


class WebhookReceiveApi(APIView):
    """Signed notifications from a channel (HMAC-SHA256 over "<timestamp>." + body, headers
    X-Acquirer-Timestamp and X-Acquirer-Signature). Verified ones trigger a status query."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    # Every notification comes from the bank's own addresses, and each is signed: counted by
    # the system and endpoint layers, not as one client's writes (shop.throttle).
    client_write_limit = False

    class OutputSerializer(serializers.Serializer):
        received = serializers.BooleanField()
        outcome = serializers.CharField(help_text="duplicate, ignored or the payment's status")

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter(
                "X-Acquirer-Timestamp", str, OpenApiParameter.HEADER, required=True,
                description="Unix time in seconds; stale ones are refused",
            ),
            OpenApiParameter(
                "X-Acquirer-Signature", str, OpenApiParameter.HEADER, required=True,
                description='"sha256=" + hex HMAC-SHA256 of "<timestamp>." + body',
            ),
        ],
        responses={200: OutputSerializer},
    )  # fmt: skip
    def post(self, request: Request, channel: str) -> Response:
        body = body_bounded(request)  # 413 past API_MAX_JSON_BYTES
        try:
            event = services.webhook_verify(
                channel=channel,
                timestamp=request.headers.get("X-Acquirer-Timestamp"),
                signature=request.headers.get("X-Acquirer-Signature"),
                body=body,
            )
        except WebhookRejected:
            services.webhook_distrusted(body=body)
            raise
        outcome = services.webhook_receive(channel=channel, event=event)
        return Response({"received": True, "outcome": outcome})


__all__ = ["WebhookRejected"]
