"""Reconciliation metrics: discrepancies found (event counter) and the open ones and the last
run per channel (read from the database at scrape time)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter
from prometheus_client.core import Metric

from shop.metrics import gauge, live_collector

DISCREPANCIES_FOUND = Counter(
    "shop_reconciliation_discrepancies_found_total",
    "Discrepancies found for the first time, by channel and kind",
    ["channel", "kind"],
)


@live_collector("reconciliation")
def _reconciliation() -> Iterable[Metric]:
    from apps.reconciliation.selectors import discrepancies_open_by_kind, runs_latest

    runs = runs_latest()
    return [
        gauge(
            "shop_reconciliation_discrepancies_open",
            "Discrepancies waiting for an operator, by kind",
            ["kind"],
            {(kind,): n for kind, n in discrepancies_open_by_kind().items()},
        ),
        gauge(
            "shop_reconciliation_last_run_timestamp_seconds",
            "When each channel's latest reconciliation run started (epoch seconds)",
            ["channel", "status"],
            {(run.channel, run.status): run.started_at.timestamp() for run in runs},
        ),
    ]
