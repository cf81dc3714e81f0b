"""Everything the operators' dashboard shows, read through each app's selectors.

Each section is read on its own: one that fails (Redis, the broker or a shard down — exactly
when the page is needed most) shows its error, the others still render."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from shop.metrics import queue_depths_now
from shop.models import Alert
from shop.review import review_waiting
from shop.runtime import switches_current

logger = logging.getLogger(__name__)

CHART_MINUTES = 60


@dataclass
class Section:
    value: Any = None
    error: str = ""


def _section(name: str, read: Callable[[], Any]) -> Section:
    try:
        return Section(read())
    except Exception as exc:  # noqa: BLE001 — the page must render whatever is down
        logger.warning("dashboard section %s unavailable: %s", name, exc)
        return Section(error=f"unavailable: {type(exc).__name__}: {exc}"[:300])


@dataclass
class ChartSeries:
    minutes: list[datetime]
    checkouts: list[int]
    payment_success: list[float | None]  # succeeded / (succeeded + failed); None: none decided
    payments: list[int] = field(default_factory=list)


def _minutes(now: datetime) -> list[datetime]:
    last = now.replace(second=0, microsecond=0)
    return [last - timedelta(minutes=CHART_MINUTES - 1 - i) for i in range(CHART_MINUTES)]


def charts_last_hour(now: datetime | None = None) -> ChartSeries:
    from apps.orders.selectors import orders_per_minute
    from apps.payments.selectors import payments_per_minute

    minutes = _minutes(now or timezone.now())
    orders = orders_per_minute(since=minutes[0])
    payments = payments_per_minute(since=minutes[0])
    success: list[float | None] = []
    totals: list[int] = []
    for minute in minutes:
        by_status = payments.get(minute, {})
        decided = by_status.get("succeeded", 0) + by_status.get("failed", 0)
        success.append(by_status.get("succeeded", 0) / decided if decided else None)
        totals.append(sum(by_status.values()))
    return ChartSeries(minutes, [orders.get(m, 0) for m in minutes], success, totals)


# How many of the latest alerts the dashboard lists.
RECENT_ALERTS = 10


def alerts_recent() -> list[Alert]:
    return list(Alert.objects.order_by("-last_seen_at")[:RECENT_ALERTS])


def _channels() -> list[Any]:
    from apps.payments.selectors import channels_health

    return channels_health()


def _flash_sales() -> list[Any]:
    from apps.flashsales.selectors import flash_sales_status

    return flash_sales_status()


def _reconciliation() -> dict[str, Any]:
    from apps.reconciliation.selectors import discrepancies_open_by_kind, runs_latest

    open_by_kind = discrepancies_open_by_kind()
    return {"runs": runs_latest(), "open": sum(open_by_kind.values()), "by_kind": open_by_kind}


def _switches() -> list[dict[str, Any]]:
    current = switches_current()
    return [
        {"name": name, "description": description, "on": current.get(name, False)}
        for name, description in settings.SWITCHES.items()
    ]


def dashboard() -> dict[str, Section]:
    return {
        "channels": _section("channels", _channels),
        "flash_sales": _section("flash_sales", _flash_sales),
        "queues": _section("queues", queue_depths_now),
        "reviews": _section("reviews", review_waiting),
        "alerts": _section("alerts", alerts_recent),
        "reconciliation": _section("reconciliation", _reconciliation),
        "switches": _section("switches", _switches),
        "charts": _section("charts", charts_last_hour),
    }
