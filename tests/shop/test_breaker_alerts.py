"""A circuit breaker opening alerts operators: once per opening, once per window."""

from __future__ import annotations

import time

import pytest

from shop.models import Alert
from shop.resilience import BreakerOpen, CircuitBreaker, breakers_local_reset
from tests.alerting import all_at_once, window_passes
from tests.shop.resilience_helpers import LOCAL_MEMORY

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.needs_redis)])
def backend(request, settings):
    """Where breaker state lives: Redis (shared) or this process (local-memory cache)."""
    if request.param == "local":
        settings.CACHES = LOCAL_MEMORY
    breakers_local_reset()
    yield request.param
    breakers_local_reset()


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def test_a_breaker_opening_alerts_once_per_window(backend, alert_sink):
    breaker = CircuitBreaker("channel:alpha", failure_threshold=3, reset_timeout=60)

    # Given failures that leave the breaker closed: nobody is told
    fail(breaker, 2)
    assert breaker.state() == "closed"
    assert not Alert.objects.exists() and alert_sink.notified("breaker_open") == 0

    # When the next failure opens it
    fail(breaker)
    assert breaker.state() == "open"

    # Then operators hear of it once, under the breaker's name
    assert alert_sink.notified("breaker_open") == 1
    alert = alert_sink.alert("breaker_open")
    assert alert.key == "channel:alpha" and "3 failures within 60 s" in alert.body

    # When it closes and opens again within the window: counted, not sent
    breaker.force_close()
    fail(breaker, 3)
    assert alert_sink.notified("breaker_open") == 1
    assert alert_sink.alert("breaker_open").occurrences == 2

    # After the window, the next opening is sent again
    window_passes("breaker_open")
    breaker.force_close()
    fail(breaker, 3)
    assert alert_sink.notified("breaker_open") == 2


def test_a_failed_trial_call_reopening_it_counts_as_an_opening(backend, alert_sink):
    breaker = CircuitBreaker("channel:beta", failure_threshold=1, reset_timeout=0.2)
    fail(breaker)
    deadline = time.monotonic() + 10
    while breaker.state() != "half_open" and time.monotonic() < deadline:
        time.sleep(0.02)
    fail(breaker)  # the probe fails
    assert breaker.state() == "open"
    assert alert_sink.alert("breaker_open").occurrences == 2
    assert alert_sink.notified("breaker_open") == 1


def test_an_operator_forcing_a_breaker_open_alerts_nobody(backend, alert_sink):
    breaker = CircuitBreaker("channel:gamma", failure_threshold=3)
    breaker.force_open()
    fail_attempts = 0
    for _ in range(5):
        try:
            fail(breaker)
        except BreakerOpen:
            fail_attempts += 1
    assert fail_attempts == 5
    assert not Alert.objects.exists() and alert_sink.notified("breaker_open") == 0


FAIL_AT = """
import time
from shop.resilience import BreakerOpen, CircuitBreaker
breaker = CircuitBreaker("channel:shared", failure_threshold=3, reset_timeout=60)
while time.time() < {start}:
    time.sleep(0.001)
try:
    breaker.record_failure(breaker.acquire())
    print("FAILED", flush=True)
except BreakerOpen:
    print("REJECTED", flush=True)
"""


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_processes_sharing_a_breaker_report_its_one_opening_once(alert_webhook):
    # Given eight processes sharing one breaker (threshold 3) through Redis
    # When each records a failure at the same instant
    results = all_at_once(FAIL_AT, webhook_url=alert_webhook.url)
    assert sorted(set(results)) <= ["FAILED", "REJECTED"], results

    # Then the breaker opened once, and only the process that opened it raised the alert
    assert CircuitBreaker("channel:shared").state() == "open"
    alert = Alert.objects.get(kind="breaker_open", key="channel:shared")
    assert (alert.occurrences, alert.notifications) == (1, 1)
    assert len(alert_webhook.of("breaker_open")) == 1
