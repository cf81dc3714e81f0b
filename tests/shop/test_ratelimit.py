"""GCRA rate limiter (shared through Redis, per-process without it).

Behaviour tests run twice in the services profile: on Redis and on the per-process limiter
(local-memory cache); in the embedded profile only the latter. Exact arithmetic is checked on an
explicit clock (``gcra_check_at``); real-clock tests use generous margins and poll with deadlines.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import random
import threading
import time

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection
from prometheus_client import REGISTRY

from shop.cache import cache_health_reset
from shop.ratelimit import (
    FAIL_CLOSED_RETRY_AFTER,
    Decision,
    Limit,
    gcra_check,
    gcra_check_at,
    gcra_reset,
    per_process_limiter,
    ratelimit_local_reset,
)
from tests.shop.ratelimit_helpers import hammer_limit
from tests.shop.resilience_helpers import DEAD_REDIS, LOCAL_MEMORY, wait_for

PROCESSES = 8


@pytest.fixture(autouse=True)
def _fresh_local_limiter():
    ratelimit_local_reset()
    yield
    ratelimit_local_reset()


def ratelimit_redis_errors() -> float:
    return REGISTRY.get_sample_value("shop_cache_errors_total", {"operation": "ratelimit"}) or 0.0


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.needs_redis)])
def backend(request, settings):
    """Where limiter state lives: Redis (shared) or this process (local-memory cache)."""
    if request.param == "local":
        settings.CACHES = LOCAL_MEMORY
    redis_errors = ratelimit_redis_errors()
    yield request.param
    # On Redis, the test must not have passed by silently falling back to per-process state
    assert ratelimit_redis_errors() == redis_errors


def refused_total(layer: str) -> float:
    return REGISTRY.get_sample_value("shop_rate_limited_total", {"layer": layer}) or 0.0


class FixedWindow:
    """The naive limiter GCRA replaces: ``rate`` per calendar window of ``period`` seconds."""

    def __init__(self, rate: int, period: float) -> None:
        self.rate, self.period = rate, period
        self.window, self.count = -1, 0

    def allow(self, now: float) -> bool:
        window = math.floor(now / self.period)
        if window != self.window:
            self.window, self.count = window, 0
        if self.count < self.rate:
            self.count += 1
            return True
        return False


# --- The window boundary: no doubled burst ----------------------------------------------------


def test_no_double_burst_at_a_window_boundary(backend):
    # 10 per 60 s with a burst of 10; windows start at multiples of 60 s (t = 600 here)
    limit = Limit(rate=10, period=60, burst=10)
    schedule = [659.9] * 10 + [660.1] * 10  # ten just before the boundary, ten just after
    fixed = FixedWindow(10, 60)

    gcra = [gcra_check_at("boundary", limit, t) for t in schedule]
    naive = [fixed.allow(t) for t in schedule]

    assert sum(naive) == 20  # a fixed window admits a double burst across the boundary
    assert [d.allowed for d in gcra] == [True] * 10 + [False] * 10
    assert [d.remaining for d in gcra[:10]] == list(range(9, -1, -1))
    # the next slot opens one emission interval (6 s) after the first burst, i.e. at 665.9
    assert gcra[10].retry_after == pytest.approx(5.8)
    assert gcra[10].degraded is (backend == "local")
    assert gcra_check_at("boundary", limit, 665.9).allowed
    assert not gcra_check_at("boundary", limit, 665.9).allowed


def test_no_double_burst_on_the_real_clock(backend):
    # The same scenario compressed to 10 per second: ten requests at t ≈ 0.99 s, ten at
    # t ≈ 1.01 s after the window start. GCRA admits the burst plus what regenerated in
    # between (0.02 s ⇒ nothing; one at most, allowing for a slow machine); a fixed window 20.
    limit = Limit(rate=10, period=1.0, burst=10)
    fixed = FixedWindow(10, 1.0)
    naive = sum(fixed.allow(t) for t in [0.99] * 10 + [1.01] * 10)
    start = time.monotonic()
    decisions: list[Decision] = []
    for at in (0.99, 1.01):
        time.sleep(max(0.0, start + at - time.monotonic()))
        decisions += [gcra_check("boundary-real", limit) for _ in range(10)]
    elapsed = time.monotonic() - start - 0.99  # from the first check to after the last

    admitted = sum(d.allowed for d in decisions)
    assert naive == 20
    assert all(d.allowed for d in decisions[:10])  # the idle key's burst
    # GCRA's guarantee: at most burst + elapsed / T in any span (plus one for clock skew)
    assert admitted <= 10 + math.floor(elapsed / limit.emission_interval) + 1
    if elapsed < 0.5:  # the normal case: nowhere near a doubled burst
        assert admitted <= 11
        refused = [d for d in decisions if not d.allowed]
        assert all(0 < d.retry_after <= 0.1 for d in refused)


def test_steady_rate_after_the_burst(backend):
    limit = Limit(rate=1, period=1.0, burst=3)
    assert limit.emission_interval == 1.0
    assert limit.tolerance == 3.0

    burst = [gcra_check_at("steady", limit, 100.0) for _ in range(4)]
    assert [d.allowed for d in burst] == [True, True, True, False]
    assert [d.remaining for d in burst] == [2, 1, 0, 0]
    assert burst[3].retry_after == pytest.approx(1.0)

    # one request per emission interval from then on, never more
    assert gcra_check_at("steady", limit, 101.0).allowed
    late = gcra_check_at("steady", limit, 101.5)
    assert not late.allowed
    assert late.retry_after == pytest.approx(0.5)
    assert gcra_check_at("steady", limit, 102.0).allowed
    # after a long idle spell the whole burst is back, and no more
    assert sum(gcra_check_at("steady", limit, 1000.0).allowed for _ in range(5)) == 3


# --- retry_after, cost ------------------------------------------------------------------------


def test_retry_after_is_the_time_to_the_next_admissible_request(backend):
    limit = Limit(rate=1, period=1.0, burst=1)
    assert gcra_check("retry", limit).allowed

    first = gcra_check("retry", limit)
    assert not first.allowed
    assert first.remaining == 0
    assert 0.7 < first.retry_after <= 1.0

    time.sleep(0.3)
    second = gcra_check("retry", limit)  # refusals consume nothing: the wait only shrinks
    assert not second.allowed
    assert second.retry_after <= first.retry_after - 0.2

    time.sleep(second.retry_after + 0.05)
    admitted = gcra_check("retry", limit)
    assert admitted.allowed
    assert admitted.retry_after == 0


def test_cost_above_one_consumes_that_many(backend):
    limit = Limit(rate=10, period=60, burst=10)  # T = 6 s

    assert gcra_check_at("bulk", limit, 0.0, cost=4) == Decision(True, 0.0, 6, backend == "local")
    too_big = gcra_check_at("bulk", limit, 0.0, cost=7)
    assert not too_big.allowed
    assert too_big.remaining == 6  # a refused request consumes nothing
    assert too_big.retry_after == pytest.approx(6.0)  # one interval frees the 7th slot
    assert gcra_check_at("bulk", limit, 0.0, cost=6).allowed
    assert not gcra_check_at("bulk", limit, 0.0).allowed
    assert gcra_check_at("bulk", limit, 6.0, cost=7).allowed is False
    assert gcra_check_at("bulk", limit, 12.0, cost=2).allowed


def test_nonsense_arguments_are_refused():
    limit = Limit(rate=10, period=1, burst=5)
    for kwargs in ({"cost": 0}, {"cost": 6}, {"fail": "maybe"}):
        with pytest.raises(ValueError):
            gcra_check("key", limit, **kwargs)
    with pytest.raises(ValueError):
        gcra_check("", limit)
    for args in ((0, 1.0), (1, 0), (1, -1.0), (1, math.inf), (1, 1.0, 0)):
        with pytest.raises(ValueError):
            Limit(*args)


def test_refusals_are_counted_per_layer(backend):
    limit = Limit(rate=1, period=60)
    layer = f"test-{backend}"
    before = refused_total(layer)

    gcra_check("metric", limit, layer=layer)
    assert refused_total(layer) == before  # admitted: not counted
    for _ in range(3):
        gcra_check("metric", limit, layer=layer)
    gcra_check("metric", limit)  # no layer: not counted

    assert refused_total(layer) == before + 3


def test_reset_forgets_the_state(backend):
    limit = Limit(rate=1, period=60)
    assert gcra_check("reset", limit).allowed
    assert not gcra_check("reset", limit).allowed

    gcra_reset("reset")

    assert gcra_check("reset", limit).allowed


def test_keys_are_independent(backend):
    limit = Limit(rate=1, period=60)
    assert gcra_check("a", limit).allowed
    assert gcra_check("b", limit).allowed
    assert not gcra_check("a", limit).allowed


# --- Per process ------------------------------------------------------------------------------


def test_per_process_limiter_is_exact_across_threads(settings):
    settings.CACHES = LOCAL_MEMORY
    limit = Limit(rate=5, period=60, burst=5)
    admitted: list[Decision] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(200):
            decision = gcra_check("threads", limit, fail="closed")
            if decision.allowed:
                admitted.append(decision)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(admitted) == 5
    assert all(d.degraded for d in admitted)  # per process, even with fail="closed"


def test_per_process_state_of_idle_keys_is_swept(settings):
    settings.CACHES = LOCAL_MEMORY
    limit = Limit(rate=1, period=1.0)
    for i in range(1000):
        gcra_check_at(f"visitor-{i}", limit, 0.0)
    assert len(per_process_limiter) == 1000

    for i in range(100):  # long after the first thousand decayed
        gcra_check_at(f"later-{i}", limit, 10.0)

    assert len(per_process_limiter) == 100  # the decayed thousand are gone


# --- Shared through Redis ---------------------------------------------------------------------


@pytest.mark.needs_redis
def test_state_is_one_redis_key_with_a_ttl_until_it_decays():
    client = get_redis_connection("default")
    key = cache.make_key("ratelimit:ttl")
    limit = Limit(rate=1, period=10, burst=3)  # T = 10 s

    gcra_check("ttl", limit)
    gcra_check("ttl", limit)
    assert client.type(key) == b"string"
    assert 19_000 <= client.pttl(key) <= 20_000  # TAT is 20 s ahead: 2 × T

    assert gcra_check("ttl", limit).allowed
    assert not gcra_check("ttl", limit).allowed  # a refusal keeps the key and its TTL
    assert 29_000 <= client.pttl(key) <= 30_000

    # a short decay still gets a TTL of at least a second, and the key vanishes by itself
    gcra_check("short", Limit(rate=10, period=1.0))
    short = cache.make_key("ratelimit:short")
    assert 900 <= client.pttl(short) <= 1000
    assert wait_for(lambda: not client.exists(short), timeout=5)

    # every limiter key carries a TTL
    keys = list(client.scan_iter(match=cache.make_key("ratelimit:*")))
    assert keys
    assert all(client.pttl(k) > 0 for k in keys)


@pytest.mark.needs_redis
def test_state_is_shared_not_per_process():
    limit = Limit(rate=2, period=60, burst=2)
    assert gcra_check("shared", limit).allowed
    per_process_limiter.reset()  # as if another process asked next
    decision = gcra_check("shared", limit)
    assert decision == Decision(allowed=True, retry_after=0.0, remaining=0, degraded=False)
    per_process_limiter.reset()
    assert not gcra_check("shared", limit).allowed


@pytest.mark.needs_redis
def test_the_script_and_the_per_process_limiter_decide_alike(settings):
    rng = random.Random(42)
    limit = Limit(rate=7, period=3.0, burst=4)
    now = 1000.0
    plan = []
    for _ in range(300):
        now += rng.choice([0.0, 0.0, 0.05, 0.2, 0.43, 1.0])
        plan.append((now, rng.randint(1, 4)))
    script = [gcra_check_at("twin", limit, t, cost=c) for t, c in plan]

    settings.CACHES = LOCAL_MEMORY
    local = [gcra_check_at("twin", limit, t, cost=c) for t, c in plan]

    assert not any(d.degraded for d in script)
    assert [(d.allowed, d.retry_after, d.remaining) for d in script] == [
        (d.allowed, d.retry_after, d.remaining) for d in local
    ]
    assert 0 < sum(d.allowed for d in script) < len(plan)


@pytest.mark.needs_redis
def test_eight_processes_never_exceed_rate_times_elapsed_plus_burst():
    limit = Limit(rate=50, period=1.0, burst=10)
    get_redis_connection("default").connection_pool.disconnect()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=hammer_limit, args=("hammer", limit, 500, 0.004, barrier, queue))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    reports = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)

    assert all(report[0] == "ok" for report in reports), reports
    assert all(worker.exitcode == 0 for worker in workers)
    assert sum(report[2] for report in reports) == 0  # no decision fell back per process
    admitted = sum(report[1] for report in reports)
    first = min(report[3] for report in reports if report[3] is not None)
    last = max(report[4] for report in reports if report[4] is not None)
    span = last - first  # every admission happened within it, on the Redis clock
    assert span > 1.0  # ~2 s of traffic at ~2000 requests per second

    # GCRA's guarantee: at most burst + span / T admitted
    assert admitted <= limit.burst + span / limit.emission_interval
    # ... and it keeps admitting at the steady rate, not just the first burst
    assert admitted >= limit.burst + span / limit.emission_interval / 4


# --- Without (a reachable) Redis --------------------------------------------------------------


def test_local_memory_cache_uses_the_per_process_limiter_even_when_failing_closed(settings):
    settings.CACHES = LOCAL_MEMORY
    limit = Limit(rate=2, period=60, burst=2)
    decisions = [gcra_check("embedded", limit, fail="closed") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert all(d.degraded for d in decisions)
    assert decisions[2].retry_after == pytest.approx(30.0, abs=0.5)


def test_redis_down_fail_open_limits_per_process_and_warns_once(settings, caplog):
    settings.CACHES = DEAD_REDIS
    settings.CACHE_DOWN_BACKOFF = 0  # try Redis on every call: still one warning
    limit = Limit(rate=5, period=60, burst=5)

    with caplog.at_level(logging.WARNING, logger="shop.ratelimit"):
        decisions = [gcra_check("down-open", limit) for _ in range(7)]

    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert all(d.degraded for d in decisions)
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    assert decisions[5].retry_after == pytest.approx(12.0, abs=0.5)
    unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(unreachable) == 1


def test_redis_down_fail_closed_refuses(settings):
    settings.CACHES = DEAD_REDIS
    limit = Limit(rate=5, period=60, burst=5)
    before = refused_total("test-closed")

    # the first call finds Redis dead; the next ones skip it during CACHE_DOWN_BACKOFF
    decisions = [gcra_check("down-closed", limit, fail="closed", layer="test-closed")]
    decisions += [gcra_check("down-closed", limit, fail="closed", layer="test-closed")]

    expected = Decision(
        allowed=False, retry_after=FAIL_CLOSED_RETRY_AFTER, remaining=0, degraded=True
    )
    assert decisions == [expected, expected]
    assert refused_total("test-closed") == before + 2
    # fail-open callers on the same dead Redis still get the per-process limiter
    assert gcra_check("down-closed", limit).allowed


@pytest.mark.needs_redis
def test_redis_back_after_an_outage_means_shared_state_again(settings):
    limit = Limit(rate=1, period=60)
    live = settings.CACHES
    settings.CACHES = DEAD_REDIS
    assert gcra_check("outage", limit).degraded  # only this process's state
    settings.CACHES = live
    cache_health_reset()

    decision = gcra_check("outage", limit)

    assert decision.allowed
    assert not decision.degraded
