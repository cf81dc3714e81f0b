from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Prefetch, QuerySet
from django.utils import timezone

from apps.flashsales.selectors import flash_sale_gate
from apps.inventory.selectors import reservations_held_since_before
from apps.orders.models import CheckoutTicket, Order, OrderEvent, OrderLine
from shop.errors import PageNotFound
from shop.sharding import shard_for_id, shard_for_user
from shop.sharding.ids import id_floor, id_is_plausible, id_minute, id_minute_start
from shop.sharding.loops import shards_each


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
    """Orders placed per minute since ``since``, over every shard that answers (an id range
    scan: ids are time-ordered)."""
    counts: Counter[datetime] = Counter()

    def count_shard(alias: str) -> None:
        rows = (
            Order.objects.using(alias)
            .filter(id__gte=id_floor(since))
            .annotate(minute=id_minute())
            .values("minute")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in list(rows):
            counts[id_minute_start(row["minute"])] += row["n"]

    shards_each("orders_per_minute", count_shard)
    return dict(counts)


# --- Orphaned reservations ----------------------------------------------------------------------


def orphan_cutoff(*, audit: bool = False) -> datetime:
    """Stock held since before this moment by an order that does not exist is an orphan: a
    checkout that died between reserving and writing its order (ORPHAN_RESERVATION_GRACE after
    the hold, no live checkout is still about to write it). The audit allows one more sweep
    interval: it reports the orphans the sweep has had a run to release, and no others."""
    grace = settings.ORPHAN_RESERVATION_GRACE
    if audit:
        grace += settings.ORDER_EXPIRY_SWEEP_SECONDS
    return timezone.now() - timedelta(seconds=grace)


def reservations_orphaned(
    *, held_before: datetime, loop: str, limit: int | None = None
) -> Iterator[int]:
    """Ids of orders holding stock (a reservation made before ``held_before``) that are absent
    on their shard — the one definition of an orphan the expiry sweep (which releases them)
    and the invariant audit (which reports them) share. A shard that does not answer cannot
    show an order absent: its reservations are left alone (and the shard reported under
    ``loop``)."""
    found, after = 0, 0
    while limit is None or found < limit:
        ids = reservations_held_since_before(created_before=held_before, after_order_id=after)
        if not ids:
            return
        after = ids[-1]
        by_shard: dict[str, list[int]] = defaultdict(list)
        for order_id in ids:
            by_shard[shard_for_id(order_id)].append(order_id)
        present = shards_each(
            loop,
            lambda alias, by_shard=by_shard: set(
                Order.objects.using(alias)
                .filter(id__in=by_shard[alias])
                .values_list("id", flat=True)
            ),
            aliases=list(by_shard),
        )
        for alias, existing in present.items():
            for order_id in by_shard[alias]:
                if order_id not in existing:
                    yield order_id
                    found += 1
                    if limit is not None and found >= limit:
                        return


def ticket_get(*, ticket_id: int, user_id: int) -> CheckoutTicket | None:
    if not id_is_plausible(ticket_id):
        return None
    return (
        CheckoutTicket.objects.using(shard_for_id(ticket_id))
        .filter(id=ticket_id, user_id=user_id)
        .first()
    )


def ticket_position(ticket: CheckoutTicket) -> int | None:
    """Tickets ahead of this one in its gate's line (approximate; None when unknown)."""
    if ticket.status != CheckoutTicket.Status.QUEUED or not ticket.gate_sku_id:
        return None
    state = flash_sale_gate(sku_id=ticket.gate_sku_id)
    if state is None:
        return None
    processed = state.seq - state.queued
    return max(0, ticket.seq - processed - 1)
