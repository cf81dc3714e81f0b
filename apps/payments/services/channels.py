"""Talking to card channels, and choosing one.

Every call to a channel goes through :class:`ChannelClient`: the one HTTP client with explicit
connect/read timeouts (BREAKER_CALL_TIMEOUT) on kept-alive connections (``shop.http.pool``, one
pool per process, thread-safe), the channel's circuit breaker (shared through Redis) and, for
calls that are safe to repeat (our payment id is the channel's idempotency key), the retry
policy. Outcomes feed the channel's live health: a sliding window in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from apps.payments.models import PaymentChannel
from shop.alerts import alert_raise
from shop.http import HttpNoAnswer, HttpTimeout, HttpUnavailable, http_json
from shop.resilience import BreakerOpen, CircuitBreaker, retry_call
from shop.window import SlidingWindow, WindowStats

logger = logging.getLogger(__name__)

# The live-health window: long enough to be stable, short enough to notice a failing bank.
HEALTH_WINDOW_SECONDS = 300
# Latencies within one step rank as equal, so cost decides between similar channels.
LATENCY_STEP_MS = 50


class ChannelError(Exception):
    """A call to a channel failed. ``retriable``: the same call may be repeated."""

    retriable = False
    code = "channel_error"


class ChannelUnavailable(ChannelError):
    """The channel did not take the call (down, erroring, closed, breaker open): no effect."""

    retriable = True
    code = "channel_unavailable"


class ChannelOutcomeUnknown(ChannelError):
    """The call may have taken effect, but no answer came (timeout, lost response)."""

    code = "channel_timeout"


class ChannelRejected(ChannelError):
    """The channel refused the request itself (4xx): repeating it changes nothing."""

    code = "channel_rejected"


def breaker_for(code: str) -> CircuitBreaker:
    return CircuitBreaker(f"channel:{code}")


def health_for(code: str, window: int = HEALTH_WINDOW_SECONDS) -> SlidingWindow:
    """The channel's live health; ``window`` (seconds, at most the recorded 300) to read."""
    return SlidingWindow(f"channel-health:{code}", window=window)


class _HealthSnapshot:
    """This process's recent reads of the channels' live health, for routing: each channel's
    window is read from Redis at most once per CHANNEL_HEALTH_CACHE_TTL seconds instead of for
    every payment. Thread-safe (web threads rank at once); a read happens outside the lock, so
    a slow Redis holds up no other thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, tuple[float, WindowStats | None]] = {}

    def read(self, code: str) -> WindowStats | None:
        ttl = settings.CHANNEL_HEALTH_CACHE_TTL
        if ttl > 0:
            with self._lock:
                entry = self._stats.get(code)
            if entry is not None and time.monotonic() - entry[0] < ttl:
                return entry[1]
        stats = health_for(code).read()
        if ttl > 0:
            with self._lock:
                self._stats[code] = (time.monotonic(), stats)
        return stats

    def forget(self) -> None:
        with self._lock:
            self._stats.clear()


health_snapshot = _HealthSnapshot()


class ChannelClient:
    def __init__(self, code: str) -> None:
        self.code = code
        self.base = f"{settings.ACQUIRER_URL.rstrip('/')}/channels/{code}"
        self.breaker = breaker_for(code)
        self.health = health_for(code)

    def _once(self, method: str, path: str, body: Any) -> dict[str, Any]:
        try:
            permit = self.breaker.acquire()
        except BreakerOpen as exc:
            raise ChannelUnavailable(f"{self.code}: circuit open") from exc
        started = time.monotonic()
        try:
            response = http_json(
                method,
                f"{self.base}{path}",
                body,
                connect_timeout=settings.CHANNEL_CONNECT_TIMEOUT,
                read_timeout=settings.BREAKER_CALL_TIMEOUT,
                keep_alive=True,  # authorize and capture go to the same bank, back to back
            )
        except (HttpTimeout, HttpNoAnswer) as exc:
            self._failed(permit, started)
            raise ChannelOutcomeUnknown(f"{self.code}: {exc}") from exc
        except HttpUnavailable as exc:
            self._failed(permit, started)
            raise ChannelUnavailable(f"{self.code}: {exc}") from exc
        if response.status >= 500:
            self._failed(permit, started)
            raise ChannelUnavailable(f"{self.code}: HTTP {response.status} {response.body}")
        self.breaker.record_success(permit)
        self.health.record(ok=True, latency_ms=int((time.monotonic() - started) * 1000))
        if response.status == 404 and method == "GET":
            return {"status": "not_found"}
        if response.status >= 400:
            raise ChannelRejected(f"{self.code}: HTTP {response.status} {response.body}")
        return response.body

    def _failed(self, permit: Any, started: float) -> None:
        self.breaker.record_failure(permit)
        self.health.record(ok=False, latency_ms=int((time.monotonic() - started) * 1000))

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One call; retried (full jitter) only while the channel is unavailable, because
        every call we make is keyed by our payment or refund id at the channel."""
        return retry_call(
            self._once,
            method,
            path,
            body,
            retriable=lambda exc: isinstance(exc, ChannelError) and exc.retriable,
        )

    def authorize(self, *, payment_id: int, amount: int, currency: str) -> dict[str, Any]:
        return self.call(
            "POST",
            "/payments/authorize",
            {
                "payment_id": str(payment_id),
                "amount": amount,
                "currency": currency,
                "method": "card",
            },
        )

    def capture(self, *, payment_id: int) -> dict[str, Any]:
        return self.call("POST", f"/payments/{payment_id}/capture", {})

    def void(self, *, payment_id: int) -> dict[str, Any]:
        return self.call("POST", f"/payments/{payment_id}/void", {})

    def refund(self, *, payment_id: int, refund_id: int, amount: int) -> dict[str, Any]:
        return self.call(
            "POST",
            f"/payments/{payment_id}/refund",
            {"refund_id": str(refund_id), "amount": amount},
        )

    def status(self, *, payment_id: int) -> dict[str, Any]:
        """The channel's view of our payment; ``{"status": "not_found"}`` if it has none."""
        return self._once("GET", f"/payments/{payment_id}", None)


# --- Routing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    channel: PaymentChannel
    success_rate: float
    latency_ms: float
    fee: int
    samples: int

    def reason(self, rank: int, of: int) -> str:
        return (
            f"rank {rank}/{of}: success {self.success_rate:.0%} over {self.samples} recent calls, "
            f"~{self.latency_ms:.0f} ms, fee {self.fee}"
        )


def _in_service(channel: PaymentChannel, now: datetime) -> bool:
    local = timezone.localtime(now).time()
    opens, closes = channel.opens_at, channel.closes_at
    if opens == closes:
        return True
    if opens < closes:
        return opens <= local < closes
    return local >= opens or local < closes  # overnight hours


def channels_rank(*, method: str, amount: int, now: datetime | None = None) -> list[Candidate]:
    """Channels that can take this payment now, best first: enabled, supporting the method, in
    service hours, breaker not open, amount within limits; ranked by live success rate
    (rounded to 5 %, so noise does not flip the order), then latency, then cost. The live
    health is this process's read of at most CHANNEL_HEALTH_CACHE_TTL seconds ago."""
    now = now or timezone.now()
    candidates = []
    for channel in PaymentChannel.objects.filter(enabled=True).order_by("priority", "code"):
        if method not in channel.methods or not _in_service(channel, now):
            continue
        if not channel.min_amount <= amount <= channel.max_amount:
            continue
        if breaker_for(channel.code).state() == "open":
            continue
        stats = health_snapshot.read(channel.code)
        rate = stats.success_rate if stats and stats.success_rate is not None else 1.0
        latency = (
            stats.mean_latency_ms
            if stats and stats.mean_latency_ms is not None
            else channel.expected_latency_ms
        )
        candidates.append(
            Candidate(channel, rate, latency, channel.fee_for(amount), stats.total if stats else 0)
        )
    candidates.sort(
        key=lambda c: (
            -round(c.success_rate * 20),  # 5 % steps
            round(c.latency_ms / LATENCY_STEP_MS),
            c.fee,
            c.channel.priority,
        )
    )
    return candidates


# The sandbox acquirer's banks (apps/payments/sandbox), as the shop knows them.
SANDBOX_CHANNELS: list[dict[str, Any]] = [
    {
        "code": "alpha",
        "name": "Alpha Bank",
        "fee_bps": 290,
        "fee_fixed": 30,
        "expected_latency_ms": 40,
        "hours": ("00:00", "00:00"),
        "min_amount": 50,
        "max_amount": 10_000_000,
        "priority": 1,
    },
    {
        "code": "beta",
        "name": "Beta Payments",
        "fee_bps": 190,
        "fee_fixed": 20,
        "expected_latency_ms": 120,
        "hours": ("00:00", "00:00"),
        "min_amount": 50,
        "max_amount": 5_000_000,
        "priority": 2,
    },
    {
        "code": "gamma",
        "name": "Gamma Pay",
        "fee_bps": 120,
        "fee_fixed": 10,
        "expected_latency_ms": 250,
        "hours": ("06:00", "22:00"),
        "min_amount": 100,
        "max_amount": 1_000_000,
        "priority": 3,
    },
]


def channels_ensure_sandbox() -> int:
    """Create or refresh the sandbox channels (demo data, tests). Returns how many exist."""
    from datetime import time as clock

    for spec in SANDBOX_CHANNELS:
        opens, closes = (clock.fromisoformat(value) for value in spec["hours"])
        PaymentChannel.objects.update_or_create(
            code=spec["code"],
            defaults={
                "name": spec["name"],
                "methods": ["card"],
                "opens_at": opens,
                "closes_at": closes,
                "min_amount": spec["min_amount"],
                "max_amount": spec["max_amount"],
                "fee_bps": spec["fee_bps"],
                "fee_fixed": spec["fee_fixed"],
                "expected_latency_ms": spec["expected_latency_ms"],
                "priority": spec["priority"],
            },
        )
    return PaymentChannel.objects.count()


# --- Alerts ---------------------------------------------------------------------------------------


def channels_watch() -> dict[str, float]:
    """Alert (kind ``channel_success``, key = the channel) for each enabled channel whose live
    success rate over ALERT_CHANNEL_WINDOW (at most the health window) is below
    ALERT_CHANNEL_SUCCESS_MIN, counted only with at least ALERT_CHANNEL_MIN_ATTEMPTS calls.
    Returns those channels' rates. Without Redis there is no live health and nothing alerts."""
    window = min(settings.ALERT_CHANNEL_WINDOW, HEALTH_WINDOW_SECONDS)
    threshold, minimum = settings.ALERT_CHANNEL_SUCCESS_MIN, settings.ALERT_CHANNEL_MIN_ATTEMPTS
    failing = {}
    codes = PaymentChannel.objects.filter(enabled=True).order_by("code")
    for code in codes.values_list("code", flat=True):
        stats = health_for(code, window).read()
        if stats is None or stats.total < max(minimum, 1) or stats.success_rate >= threshold:
            continue
        failing[code] = stats.success_rate
        alert_raise(
            kind="channel_success",
            key=code,
            subject=(
                f"Payment channel {code}: {stats.success_rate:.0%} of calls succeeded over the "
                f"last {window} s"
            ),
            body=(
                f"{stats.failed} of {stats.total} calls to channel {code} failed (errors, "
                f"timeouts, unreachable) over the last {window} s; mean latency "
                f"{stats.mean_latency_ms:.0f} ms. Alert threshold: below {threshold:.0%} with at "
                f"least {minimum} calls. Its breaker is {breaker_for(code).state()}; routing "
                "already prefers healthier channels."
            ),
        )
    return failing
