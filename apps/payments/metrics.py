"""Payment metrics: attempts per channel and outcome with latency (event counters), and each
channel's breaker and live health (read from Redis at scrape time)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import Metric

from shop.metrics import LATENCY_BUCKETS, gauge, live_collector

PAYMENT_ATTEMPTS = Counter(
    "shop_payment_attempts_total",
    "Attempts to take money, by channel (card channels and the wallet) and outcome: success, "
    "declined, unavailable (failed over), unknown (answer lost), status_query",
    ["channel", "outcome"],
)
PAYMENT_LATENCY = Histogram(
    "shop_payment_attempt_duration_seconds",
    "Time of one authorization at a channel (or a wallet freeze)",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
PAYMENTS = Counter(
    "shop_payments_total",
    "Payments as answered to the buyer, by method and status (succeeded, failed, pending, unknown)",
    ["method", "status"],
)

_OUTCOMES = {
    "authorized": "success",
    "captured": "success",
    "declined": "declined",
    "rejected": "declined",
    "unavailable": "unavailable",
    "timeout": "unknown",
    "unknown": "unknown",
}
# Breaker states as numbers, the same codes shop.resilience uses.
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


def attempt_observed(*, channel: str, outcome: str, latency_ms: int | None = None) -> None:
    label = "status_query" if outcome.startswith("queried:") else _OUTCOMES.get(outcome, "other")
    PAYMENT_ATTEMPTS.labels(channel, label).inc()
    if latency_ms is not None:
        PAYMENT_LATENCY.labels(channel).observe(latency_ms / 1000)


@live_collector("payment_channels")
def _channels() -> Iterable[Metric]:
    from apps.payments.selectors import channels_health

    health = channels_health()
    return [
        gauge(
            "shop_channel_breaker_state",
            "Each channel's circuit breaker as shared through Redis (0 closed, 1 half-open, "
            "2 open)",
            ["channel"],
            {(h.code,): BREAKER_CODES.get(h.breaker_state, 2) for h in health},
        ),
        gauge(
            "shop_channel_success_ratio",
            "Successful calls / calls at each channel over its live-health window",
            ["channel"],
            {(h.code,): h.success_rate for h in health if h.success_rate is not None},
        ),
        gauge(
            "shop_channel_window_calls",
            "Calls at each channel within its live-health window",
            ["channel"],
            {(h.code,): h.calls for h in health},
        ),
        gauge(
            "shop_channel_enabled",
            "1 when the channel is enabled by operators",
            ["channel"],
            {(h.code,): int(h.enabled) for h in health},
        ),
    ]
