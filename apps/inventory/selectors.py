from __future__ import annotations

import threading
import time
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


class _StockSnapshot:
    """Units available per SKU as this process last read them from the database, for the SKUs
    it was asked about (at most STOCK_SNAPSHOT_MAX_SKUS). Every AVAILABILITY_CACHE_TTL seconds
    the whole set is read again in one query; a SKU not seen before costs one query then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[int, int] = {}
        self._read_at = float("-inf")

    def get(self, sku_ids: Sequence[int]) -> dict[int, int]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= settings.AVAILABILITY_CACHE_TTL:
                wanted = set(sku_ids)
                if len(self._values) + len(wanted) <= settings.STOCK_SNAPSHOT_MAX_SKUS:
                    wanted |= self._values.keys()
                self._values = self._load(wanted)
                self._read_at = now
            elif missing := [sku_id for sku_id in sku_ids if sku_id not in self._values]:
                if len(self._values) + len(missing) > settings.STOCK_SNAPSHOT_MAX_SKUS:
                    self._values, missing = {}, list(sku_ids)  # start over from this request
                self._values.update(self._load(set(missing)))
            values = self._values
            return {sku_id: values[sku_id] for sku_id in sku_ids}

    @staticmethod
    def _load(sku_ids: set[int]) -> dict[int, int]:
        loaded = dict(
            Stock.objects.filter(sku_id__in=sorted(sku_ids)).values_list("sku_id", "available")
        )
        return {sku_id: loaded.get(sku_id, 0) for sku_id in sku_ids}

    def clear(self) -> None:
        with self._lock:
            self._values = {}
            self._read_at = float("-inf")


_snapshot = _StockSnapshot()


def stock_available_snapshot(sku_ids: Sequence[int]) -> dict[int, int]:
    """Units available per SKU, for display, from this process's snapshot: at most
    AVAILABILITY_CACHE_TTL seconds old, one query per that interval for every SKU it holds
    (thread-safe). What the page cache checks a kept page's stock figures against."""
    return _snapshot.get(list(dict.fromkeys(sku_ids)))


def stock_snapshot_clear() -> None:
    """Forget this process's snapshot (tests)."""
    _snapshot.clear()


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
