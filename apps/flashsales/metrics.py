"""Flash-sale metrics: each sale's gate (units left, queue, answers) and the database's stock,
read at scrape time. A leaf: it builds metric families from the statuses it is handed and
imports nothing back from the app (the app registers the source at start-up)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric

from shop.metrics import gauge, live_collector


def flash_sale_metrics(sales: Sequence[Any]) -> list[Metric]:
    """Metric families of the given flash-sale statuses (see selectors.FlashSaleStatus)."""
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


def flash_sales_collector_register(statuses: Callable[[], Sequence[Any]]) -> None:
    """Read ``statuses()`` at every scrape and report them."""

    @live_collector("flash_sales")
    def _flash_sales() -> Iterable[Metric]:
        return flash_sale_metrics(statuses())
