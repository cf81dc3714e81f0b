from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.orders.api import IDEMPOTENCY_PARAMETER
from apps.payments import selectors, services
from apps.payments.models import Payment
from apps.payments.services.coordinator import METHODS
from apps.payments.services.webhooks import WebhookRejected
from shop.idempotency import Replay, idempotent_request
from shop.sharding import shard_for_user


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
    created_at = serializers.DateTimeField()


def payment_body(payment: Payment) -> dict[str, Any]:
    return PaymentOutputSerializer(payment).data


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
            # A retry after a crash reports the payment the first request started.
            payment_id = claim.resume_or_start(
                lambda attach: services.payment_pay(
                    order_id=order_id,
                    user_id=user_id,
                    method=data["method"],
                    channel=data.get("channel"),
                    on_started=lambda payment: attach(str(payment.id)),
                )
            )
            body = payment_body(selectors.payment_get(payment_id=int(payment_id)))
            claim.remember(status=201, body=body)
            return Response(body, status=201)


class RefundCreateApi(APIView):
    """Refund a paid order in full or in part, through the channel it was paid with."""

    class InputSerializer(serializers.Serializer):
        amount = serializers.IntegerField(min_value=1)

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: RefundOutputSerializer},
    )
    def post(self, request: Request, order_id: int) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            # A retry after a crash reports the refund the first request started.
            refund_id = claim.resume_or_start(
                lambda attach: services.refund_create(
                    order_id=order_id,
                    owner_id=user_id,
                    amount=serializer.validated_data["amount"],
                    actor=f"user:{user_id}",
                    on_created=lambda refund: attach(str(refund.id)),
                )
            )
            body = RefundOutputSerializer(selectors.refund_get(refund_id=int(refund_id))).data
            claim.remember(status=201, body=body)
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
        try:
            event = services.webhook_verify(
                channel=channel,
                timestamp=request.headers.get("X-Acquirer-Timestamp"),
                signature=request.headers.get("X-Acquirer-Signature"),
                body=request.body,
            )
        except WebhookRejected:
            services.webhook_distrusted(body=request.body)
            raise
        outcome = services.webhook_receive(channel=channel, event=event)
        return Response({"received": True, "outcome": outcome})


__all__ = ["WebhookRejected"]
