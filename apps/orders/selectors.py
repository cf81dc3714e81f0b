from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Prefetch, QuerySet

from apps.orders.models import Order, OrderEvent, OrderLine
from shop.errors import PageNotFound
from shop.sharding import order_shard_aliases, shard_for_id, shard_for_user
from shop.sharding.ids import id_floor, id_is_plausible, id_minute, id_minute_start


def _with_lines(queryset: QuerySet[Order]) -> QuerySet[Order]:
    # "payments" and "refund_requests" are the reverse sides of the payments app's
    # Payment.order and RefundRequest.order (same shard).
    return queryset.prefetch_related(
        Prefetch("lines", queryset=OrderLine.objects.order_by("id")),
        "payments",
        "refund_requests",
    )


def order_get(*, order_id: int, user_id: int | None = None) -> Order | None:
    """An order with its lines, from the shard its id names; None if it does not exist or (with
    ``user_id``) belongs to someone else — callers answer 404 either way."""
    if not id_is_plausible(order_id):
        return None
    alias = shard_for_id(order_id)
    queryset = Order.objects.using(alias).filter(id=order_id)
    if user_id is not None:
        queryset = queryset.filter(user_id=user_id)
    return _with_lines(queryset).first()


def order_events(order: Order) -> list[OrderEvent]:
    return list(OrderEvent.objects.using(order._state.db).filter(order=order).order_by("id"))


@dataclass(frozen=True)
class OrderPage:
    items: list[Order]
    count: int
    page: int
    page_size: int

    @property
    def has_next(self) -> bool:
        return self.page * self.page_size < self.count


def orders_for_user(*, user_id: int, page: int = 1, page_size: int = 20) -> OrderPage:
    """A buyer's orders, newest first, from their shard (4 queries whatever the page size).
    A page past the last raises PageNotFound (page 1 always exists), before any slice whose
    offset might not fit a 64-bit column."""
    queryset = Order.objects.using(shard_for_user(user_id)).filter(user_id=user_id)
    count = queryset.count()
    if page > max(1, math.ceil(count / page_size)):
        raise PageNotFound()
    offset = (page - 1) * page_size
    items = list(_with_lines(queryset.order_by("-id"))[offset : offset + page_size])
    return OrderPage(items=items, count=count, page=page, page_size=page_size)


def orders_per_minute(*, since: datetime) -> dict[datetime, int]:
    """Orders placed per minute since ``since``, over every shard (an id range scan: ids are
    time-ordered)."""
    counts: Counter[datetime] = Counter()
    for alias in order_shard_aliases():
        rows = (
            Order.objects.using(alias)
            .filter(id__gte=id_floor(since))
            .annotate(minute=id_minute())
            .values("minute")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            counts[id_minute_start(row["minute"])] += row["n"]
    return dict(counts)
