from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from apps.orders import selectors, services
from apps.orders.exceptions import OrderNotFound
from apps.orders.models import Order
from shop.idempotency import HEADER, Replay, idempotent_request
from shop.sharding import shard_for_user

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

    def get_payments(self, order: Order) -> list[dict[str, Any]]:
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


def order_body(order: Order) -> dict[str, Any]:
    return OrderOutputSerializer(order).data


class OrderCreateApi(APIView):
    """Check out: reserve the items and create an order awaiting payment. Idempotent."""

    class ItemSerializer(serializers.Serializer):
        sku = serializers.CharField(max_length=64)
        quantity = serializers.IntegerField(min_value=1, max_value=settings.ORDER_LINE_MAX_QUANTITY)

    class InputSerializer(serializers.Serializer):
        items = serializers.ListField(min_length=1, max_length=settings.ORDER_MAX_LINES)

        def validate_items(self, items: list[Any]) -> list[dict[str, Any]]:
            serializer = OrderCreateApi.ItemSerializer(data=items, many=True)
            serializer.is_valid(raise_exception=True)
            return serializer.validated_data

    @extend_schema(
        request=InputSerializer,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: OrderOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            serializer = self.InputSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            body: dict[str, Any] = {}

            def record(order: Order) -> None:  # inside the order's transaction
                body.update(order_body(order))
                claim.complete(status=201, body=body)

            services.order_place(
                user_id=user_id, items=serializer.validated_data["items"], on_created=record
            )
            return Response(body, status=201)


class OrderListApi(APIView):
    """The caller's orders, newest first."""

    class FilterSerializer(serializers.Serializer):
        page = serializers.IntegerField(min_value=1, default=1)

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
                "results": OrderOutputSerializer(page.items, many=True).data,
            }
        )


class OrderDetailApi(APIView):
    @extend_schema(responses={200: OrderOutputSerializer})
    def get(self, request: Request, order_id: int) -> Response:
        order = selectors.order_get(order_id=order_id, user_id=request.user.id)
        if order is None:
            raise OrderNotFound()
        return Response(order_body(order))


class OrderCancelApi(APIView):
    """Cancel an unpaid order and release its stock. Idempotent."""

    @extend_schema(
        request=None, parameters=[IDEMPOTENCY_PARAMETER], responses={200: OrderOutputSerializer}
    )
    def post(self, request: Request, order_id: int) -> Response:
        user_id = request.user.id
        with idempotent_request(request, using=shard_for_user(user_id), user_id=user_id) as claim:
            if isinstance(claim, Replay):
                return claim.response()
            order = services.order_cancel(
                order_id=order_id,
                owner_id=user_id,
                actor=services.user_actor(user_id),
                reason="cancelled by the buyer",
                on_cancelled=lambda order: claim.complete(status=200, body=order_body(order)),
            )
            return Response(order_body(order))


class OrderCollectionApi(OrderCreateApi, OrderListApi):
    """`/api/v1/orders/`: GET lists (OrderListApi), POST checks out (OrderCreateApi)."""
