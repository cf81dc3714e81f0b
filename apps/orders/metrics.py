"""Checkout metrics: outcomes (event counters) and the flash sales' gates (read from Redis and
the database at scrape time)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, Metric

from shop.errors import ShopError
from shop.metrics import gauge, live_collector

CHECKOUTS = Counter(
    "shop_checkouts_total",
    "Checkouts by outcome: accepted (an order was placed, directly or from a ticket), queued "
    "(a ticket was issued), rejected (with the reason's error code)",
    ["outcome", "reason"],
)

F = TypeVar("F", bound=Callable[..., Any])


def checkout_observed(outcome: str, reason: str = "") -> None:
    CHECKOUTS.labels(outcome, reason).inc()


def checkout_counted(fn: F) -> F:
    """Count a checkout service's result: accepted when it returns, rejected with the error's
    code when it refuses (a ShopError); other exceptions are bugs and counted elsewhere."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ShopError as exc:
            checkout_observed("rejected", exc.code)
            raise
        checkout_observed("accepted")
        return result

    return wrapper  # type: ignore[return-value]


@live_collector("flash_sales")
def _flash_sales() -> Iterable[Metric]:
    from apps.orders.flash import flash_sales_status

    sales = flash_sales_status()
    answers = CounterMetricFamily(
        "shop_flash_sale_gate_answers",
        "How each flash sale's gate answered checkout attempts since the sale started",
        labels=["sku", "outcome"],
    )
    for sale in sales:
        for outcome, n in (sale.stats.totals if sale.stats else {}).items():
            answers.add_metric([sale.code, outcome], n)
    return [
        gauge(
            "shop_flash_sale_units_left",
            "Units the gate may still admit (stock on sale minus admitted)",
            ["sku"],
            {(s.code,): s.units_left for s in sales if s.units_left is not None},
        ),
        gauge(
            "shop_flash_sale_queued",
            "Checkout tickets admitted and waiting for a worker",
            ["sku"],
            {(s.code,): s.queued for s in sales},
        ),
        gauge(
            "shop_flash_sale_stock_available",
            "Units available per the database (the truth the gate is rebuilt from)",
            ["sku"],
            {(s.code,): s.stock_available for s in sales},
        ),
        answers,
    ]
