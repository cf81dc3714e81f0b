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
from shop.sharding import order_shard_aliases, shard_for_id
from shop.sharding.ids import id_is_plausible


def _requested_alias(request: HttpRequest) -> str:
    match = request.resolver_match
    object_id = (match.kwargs.get("object_id") if match else None) or ""
    query = request.GET.get("q", "").strip()
    for candidate in (object_id, query):
        if candidate.isdigit() and id_is_plausible(int(candidate)):
            return shard_for_id(int(candidate))
    shard = request.GET.get("shard")
    aliases = order_shard_aliases()
    return shard if shard in aliases else aliases[0]


class ShardFilter(admin.SimpleListFilter):
    title = "shard"
    parameter_name = "shard"

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.current_alias = _requested_alias(request)
        super().__init__(request, *args, **kwargs)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(alias, alias) for alias in order_shard_aliases()]

    def choices(self, changelist: Any):  # no "All": one shard at a time
        current = self.current_alias
        for value, label in self.lookup_choices:
            yield {
                "selected": value == current,
                "query_string": changelist.get_query_string({self.parameter_name: value}, ["q"]),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset  # the shard is chosen in OrderAdmin.get_queryset


class ShardedInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(_requested_alias(request))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OrderLineInline(ShardedInline):
    model = OrderLine
    fields = ["sku_code", "name", "unit_price", "quantity", "line_total", "allocated_at"]
    readonly_fields = fields


class OrderEventInline(ShardedInline):
    model = OrderEvent
    fields = ["created_at", "kind", "from_status", "to_status", "actor", "reason"]
    readonly_fields = fields


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
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
    search_fields = ["id"]
    search_help_text = "An order id finds the order on whichever shard holds it."
    inlines = [OrderLineInline, OrderEventInline]
    actions = ["cancel_orders", "mark_fulfilled", "retry_processing"]
    list_per_page = 50
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(_requested_alias(request))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if not term.isdigit():
            return queryset.none(), False
        return queryset.filter(id=int(term)), False

    @admin.display(description="order", ordering="id")
    def order_id(self, order: Order) -> str:
        return str(order.id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

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
