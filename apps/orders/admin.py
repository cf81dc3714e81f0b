"""Operators' view of orders across shards: pick a shard, or type an order id (its shard is
decoded from the id). Orders are changed only through the order services (actions)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.orders import services
from apps.orders.exceptions import InvalidOrderState
from apps.orders.models import Order, OrderEvent, OrderLine
from shop.sharding.admin import ShardedAdmin, ShardedInline, ShardFilter


class OrderLineInline(ShardedInline):
    model = OrderLine
    fields = ["sku_code", "name", "unit_price", "quantity", "line_total", "allocated_at"]
    readonly_fields = fields


class OrderEventInline(ShardedInline):
    model = OrderEvent
    fields = ["created_at", "kind", "from_status", "to_status", "actor", "reason"]
    readonly_fields = fields


@admin.register(Order)
class OrderAdmin(ShardedAdmin):
    list_display = [
        "order_id",
        "user_id",
        "status",
        "total",
        "currency",
        "created_at",
        "expires_at",
    ]
    list_filter = [ShardFilter, "status"]
    inlines = [OrderLineInline, OrderEventInline]
    actions = ["cancel_orders", "mark_fulfilled", "retry_processing"]

    @admin.display(description="order", ordering="id")
    def order_id(self, order: Order) -> str:
        return str(order.id)

    def _each(self, request: HttpRequest, queryset: QuerySet, action: Any, done: str) -> None:
        ok, refused = 0, []
        for order_id in queryset.values_list("id", flat=True):
            try:
                action(order_id)
                ok += 1
            except InvalidOrderState as exc:
                refused.append(f"{order_id}: {exc.message}")
        if ok:
            self.message_user(request, f"{ok} order(s) {done}.", messages.SUCCESS)
        for line in refused[:10]:
            self.message_user(request, line, messages.WARNING)

    @admin.action(description="Cancel selected unpaid orders (releases stock)")
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = f"operator:{request.user.pk}"
        self._each(
            request,
            queryset,
            lambda oid: services.order_cancel(order_id=oid, actor=actor, reason="by an operator"),
            "cancelled",
        )

    @admin.action(description="Mark selected orders fulfilled (shipped)")
    def mark_fulfilled(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = f"operator:{request.user.pk}"
        self._each(
            request,
            queryset,
            lambda oid: services.order_mark_fulfilled(order_id=oid, actor=actor),
            "marked fulfilled",
        )

    @admin.action(description="Retry processing of selected orders now")
    def retry_processing(self, request: HttpRequest, queryset: QuerySet) -> None:
        actor = f"operator:{request.user.pk}"
        self._each(
            request,
            queryset,
            lambda oid: services.order_processing_retry(order_id=oid, actor=actor),
            "queued for processing",
        )
