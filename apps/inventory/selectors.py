from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.conf import settings

from apps.inventory.models import Reservation, Stock
from shop.cache import cache_get_many, cache_set_many


def _availability_key(sku_id: int) -> str:
    return f"avail:{sku_id}"


def stock_available_many(sku_ids: Sequence[int]) -> dict[int, int]:
    """Units available per SKU, for display. Cached for AVAILABILITY_CACHE_TTL seconds.

    Display only: checkout reserves against the database, which stays the truth. SKUs without
    a stock row have 0. One cache round trip, plus at most one query for the misses.
    """
    ids = list(dict.fromkeys(sku_ids))
    if not ids:
        return {}
    keys = {sku_id: _availability_key(sku_id) for sku_id in ids}
    cached = cache_get_many(list(keys.values()))
    result = {sku_id: cached[key] for sku_id, key in keys.items() if key in cached}
    missing = [sku_id for sku_id in ids if sku_id not in result]
    if missing:
        loaded = dict(Stock.objects.filter(sku_id__in=missing).values_list("sku_id", "available"))
        fresh = {sku_id: loaded.get(sku_id, 0) for sku_id in missing}
        cache_set_many(
            {keys[sku_id]: units for sku_id, units in fresh.items()},
            ttl=settings.AVAILABILITY_CACHE_TTL,
        )
        result.update(fresh)
    return result


def reservations_held_expired(*, before: datetime, limit: int = 500) -> list[int]:
    """Ids of orders whose reservations are still held though they expired before ``before``."""
    return list(
        Reservation.objects.filter(status=Reservation.Status.HELD, expires_at__lt=before)
        .order_by("expires_at")
        .values_list("order_id", flat=True)
        .distinct()[:limit]
    )


def reservations_held_since_before(
    *, created_before: datetime, after_order_id: int = 0, limit: int = 2000
) -> list[int]:
    """Ids of orders (ascending, above ``after_order_id``, at most ``limit``) holding stock
    through a reservation made before ``created_before`` — however far off its expiry."""
    return list(
        Reservation.objects.filter(
            status=Reservation.Status.HELD,
            created_at__lt=created_before,
            order_id__gt=after_order_id,
        )
        .order_by("order_id")
        .values_list("order_id", flat=True)
        .distinct()[:limit]
    )


def reservation_states(order_ids: Sequence[int]) -> dict[int, set[str]]:
    """The reservation statuses of each order (for audits)."""
    states: dict[int, set[str]] = {}
    for order_id, status in Reservation.objects.filter(order_id__in=order_ids).values_list(
        "order_id", "status"
    ):
        states.setdefault(order_id, set()).add(status)
    return states


def stock_available_now(*, sku_id: int) -> int:
    """Units available per the database, uncached (the truth, for flash-sale counters)."""
    return Stock.objects.filter(sku_id=sku_id).values_list("available", flat=True).first() or 0
