"""Circuit breaker (shared through Redis, per-process without it) and retry with full jitter.

Behaviour tests run twice in the services profile: on Redis and on the per-process fallback
(local-memory cache); in the embedded profile only the latter. Timings use tiny timeouts and
poll with a deadline instead of asserting how long things took.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
import time

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection
from prometheus_client import REGISTRY

from shop.cache import cache_health_reset
from shop.resilience import (
    STATE_TTL,
    BreakerOpen,
    CircuitBreaker,
    Permit,
    backoff_cap,
    backoff_delays,
    breakers_local_reset,
    retry_call,
)
from tests.shop.resilience_helpers import (
    DEAD_REDIS,
    LOCAL_MEMORY,
    acquire_or_none,
    hammer_acquire,
    take_probe_and_die,
    wait_for,
)

PROCESSES = 8


@pytest.fixture(autouse=True)
def _fresh_local_breakers():
    breakers_local_reset()
    yield
    breakers_local_reset()


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.needs_redis)])
def backend(request, settings):
    """Where breaker state lives: Redis (shared) or this process (local-memory cache)."""
    if request.param == "local":
        settings.CACHES = LOCAL_MEMORY
    redis_errors = breaker_redis_errors()
    yield request.param
    # On Redis, the test must not have passed by silently falling back to per-process state
    assert breaker_redis_errors() == redis_errors


def breaker_redis_errors() -> float:
    return REGISTRY.get_sample_value("shop_cache_errors_total", {"operation": "breaker"}) or 0.0


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def opened(breaker: CircuitBreaker) -> CircuitBreaker:
    fail(breaker, breaker.failure_threshold)
    assert breaker.state() == "open"
    return breaker


def half_open(breaker: CircuitBreaker) -> CircuitBreaker:
    opened(breaker)
    assert wait_for(lambda: breaker.state() == "half_open")
    return breaker


def transitions(name: str, to: str) -> float:
    value = REGISTRY.get_sample_value("shop_breaker_transitions_total", {"breaker": name, "to": to})
    return value or 0.0


# --- Closed → open ----------------------------------------------------------------------------


def test_opens_after_threshold_failures_within_the_window(backend):
    breaker = CircuitBreaker("payments", failure_threshold=3, failure_window=60)

    fail(breaker, 2)
    assert breaker.state() == "closed"
    assert breaker.snapshot()["failures"] == 2

    fail(breaker)
    assert breaker.state() == "open"
    with pytest.raises(BreakerOpen) as rejected:
        breaker.acquire()
    assert rejected.value.name == "payments"
    assert 0 < rejected.value.retry_after <= 30  # the settings' reset timeout


def test_failures_older_than_the_window_do_not_count(backend):
    breaker = CircuitBreaker("payments", failure_threshold=3, failure_window=0.3)
    fail(breaker, 2)
    assert wait_for(lambda: breaker.snapshot()["failures"] == 0)

    fail(breaker, 2)

    assert breaker.state() == "closed"


def test_successes_while_closed_do_not_reset_the_count(backend):
    # Sliding-window semantics (documented in shop.resilience): 3 failures in the window open
    # it whatever succeeded in between.
    breaker = CircuitBreaker("payments", failure_threshold=3, failure_window=60)
    for _ in range(3):
        breaker.record_success(breaker.acquire())
        fail(breaker)

    assert breaker.state() == "open"


def test_failures_of_permits_taken_before_it_opened_do_not_extend_the_open_period(backend):
    breaker = CircuitBreaker("payments", failure_threshold=2, reset_timeout=60)
    late = breaker.acquire()
    opened(breaker)
    opened_at = breaker.snapshot()["opened_at"]

    breaker.record_failure(late)
    breaker.record_success(late)

    assert breaker.snapshot()["opened_at"] == opened_at
    assert breaker.state() == "open"


# --- Open → half-open → closed / open again ---------------------------------------------------


def test_half_open_after_the_reset_timeout_and_a_probe_success_closes(backend):
    breaker = opened(CircuitBreaker("payments", failure_threshold=2, reset_timeout=0.3))
    with pytest.raises(BreakerOpen) as rejected:
        breaker.acquire()
    assert 0 < rejected.value.retry_after <= 0.3

    assert wait_for(lambda: breaker.state() == "half_open")
    probe = breaker.acquire()
    assert probe.probe
    breaker.record_success(probe)

    assert breaker.snapshot() == {
        "name": "payments",
        "state": "closed",
        "failures": 0,
        "opened_at": None,
        "probes_in_flight": 0,
        "forced": False,
    }
    assert not breaker.acquire().probe


def test_a_probe_failure_opens_it_again_for_a_new_reset_period(backend):
    breaker = half_open(CircuitBreaker("payments", failure_threshold=2, reset_timeout=0.3))
    first_opened_at = breaker.snapshot()["opened_at"]

    breaker.record_failure(breaker.acquire())

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["opened_at"] > first_opened_at
    assert snapshot["probes_in_flight"] == 0
    # ... and it turns half-open again after another reset timeout
    assert wait_for(lambda: breaker.state() == "half_open")


def test_half_open_admits_at_most_k_probes_and_only_they_decide(backend):
    breaker = half_open(
        CircuitBreaker("payments", failure_threshold=1, reset_timeout=0.3, half_open_probes=2)
    )
    first, second = breaker.acquire(), breaker.acquire()
    with pytest.raises(BreakerOpen) as rejected:
        breaker.acquire()
    assert 0 < rejected.value.retry_after <= 0.3  # when the oldest slot expires at the latest
    assert breaker.snapshot()["probes_in_flight"] == 2

    # A permit that is not one of the live probes decides nothing
    breaker.record_failure(Permit(breaker="payments", token="stranger", probe=True))
    assert breaker.state() == "half_open"

    breaker.record_success(second)
    assert breaker.state() == "closed"
    breaker.record_failure(first)  # a late probe outcome now counts like any closed failure
    assert breaker.state() == "open"


def test_a_probe_never_recorded_expires_and_another_is_admitted(backend):
    breaker = half_open(
        CircuitBreaker("payments", failure_threshold=1, reset_timeout=0.3, probe_timeout=0.5)
    )
    abandoned = breaker.acquire()
    assert abandoned.probe
    assert acquire_or_none(breaker) is None

    probe = None

    def admitted() -> bool:
        nonlocal probe
        probe = acquire_or_none(breaker)
        return probe is not None

    assert wait_for(admitted)
    assert probe.probe
    breaker.record_success(abandoned)  # too late: its slot is gone
    assert breaker.state() == "half_open"
    breaker.record_success(probe)
    assert breaker.state() == "closed"


def test_local_breaker_admits_at_most_k_probes_across_threads(settings):
    import threading

    settings.CACHES = LOCAL_MEMORY
    breaker = half_open(
        CircuitBreaker(
            "payments", failure_threshold=1, reset_timeout=0.3, half_open_probes=3, probe_timeout=60
        )
    )
    admitted: list[Permit] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        for _ in range(200):
            permit = acquire_or_none(breaker)
            if permit is not None:
                admitted.append(permit)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(admitted) == 3


# --- call() -----------------------------------------------------------------------------------


def test_call_counts_only_failures_and_reraises(backend):
    class NotFound(Exception):
        pass

    breaker = CircuitBreaker("carrier", failure_threshold=2, reset_timeout=0.3)

    def lookup(kind: str) -> str:
        if kind == "missing":
            raise NotFound(kind)
        if kind == "down":
            raise ConnectionError(kind)
        return kind

    def is_failure(exc: BaseException) -> bool:
        return not isinstance(exc, NotFound)

    assert breaker.call(lookup, "ok", is_failure=is_failure) == "ok"
    for _ in range(3):
        with pytest.raises(NotFound):
            breaker.call(lookup, kind="missing", is_failure=is_failure)
    assert breaker.state() == "closed"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(lookup, "down", is_failure=is_failure)
    assert breaker.state() == "open"
    with pytest.raises(BreakerOpen):
        breaker.call(lookup, "ok")

    # A probe ending in an expected exception is a success for the breaker
    assert wait_for(lambda: breaker.state() == "half_open")
    with pytest.raises(NotFound):
        breaker.call(lookup, "missing", is_failure=is_failure)
    assert breaker.state() == "closed"


# --- Operator switches, settings, metrics -----------------------------------------------------


def test_force_open_holds_past_the_reset_timeout_until_force_close(backend):
    breaker = CircuitBreaker("payments", reset_timeout=0.2)
    breaker.force_open()

    time.sleep(0.4)
    assert breaker.state() == "open"
    with pytest.raises(BreakerOpen):
        breaker.acquire()
    assert breaker.snapshot()["forced"] is True
    fail_permit = Permit(breaker="payments", token="x", probe=True)
    breaker.record_success(fail_permit)
    assert breaker.state() == "open"

    breaker.force_close()

    assert breaker.snapshot() == {
        "name": "payments",
        "state": "closed",
        "failures": 0,
        "opened_at": None,
        "probes_in_flight": 0,
        "forced": False,
    }
    breaker.record_success(breaker.acquire())


def test_force_close_forgets_failures(backend):
    breaker = CircuitBreaker("payments", failure_threshold=3)
    fail(breaker, 2)
    breaker.force_close()
    fail(breaker, 2)
    assert breaker.state() == "closed"


def test_defaults_come_from_the_settings_when_used(backend, settings):
    breaker = CircuitBreaker("payments")
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_RESET_TIMEOUT = 0.3
    assert (breaker.failure_threshold, breaker.reset_timeout) == (2, 0.3)
    assert breaker.failure_window == settings.BREAKER_FAILURE_WINDOW
    assert breaker.half_open_probes == settings.BREAKER_HALF_OPEN_PROBES
    assert breaker.probe_timeout == 0.3

    fail(breaker, 2)
    assert breaker.state() == "open"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"half_open_probes": 0},
        {"reset_timeout": 0},
        {"failure_window": -1},
        {"probe_timeout": 0},
    ],
)
def test_nonsense_configuration_is_refused(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker("payments", **kwargs)


def test_transitions_are_counted_and_the_state_exported(backend):
    name = f"metrics-{backend}"
    breaker = CircuitBreaker(name, failure_threshold=1, reset_timeout=0.3)
    before = {to: transitions(name, to) for to in ("open", "half_open", "closed")}

    fail(breaker)
    assert REGISTRY.get_sample_value("shop_breaker_state", {"breaker": name}) == 2
    assert wait_for(lambda: breaker.state() == "half_open")
    breaker.record_success(breaker.acquire())

    assert {to: transitions(name, to) - before[to] for to in before} == {
        "open": 1,
        "half_open": 1,
        "closed": 1,
    }
    assert REGISTRY.get_sample_value("shop_breaker_state", {"breaker": name}) == 0


def test_breaker_open_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(BreakerOpen("payments", 1.5)))
    assert (error.name, error.retry_after) == ("payments", 1.5)
    assert "payments" in str(error)


# --- Shared through Redis ---------------------------------------------------------------------


@pytest.mark.needs_redis
def test_state_lives_in_one_redis_hash_on_server_time_with_a_ttl():
    client = get_redis_connection("default")
    key = cache.make_key("breaker:payments")
    breaker = CircuitBreaker("payments", failure_threshold=2)

    fail(breaker)
    assert client.type(key) == b"hash"
    assert 0 < client.pttl(key) <= STATE_TTL * 1000

    fail(breaker)
    seconds, micros = client.time()
    assert abs(breaker.snapshot()["opened_at"] - (seconds + micros / 1e6)) < 5
    # Another instance (another process, in production) sees the same state
    assert CircuitBreaker("payments").state() == "open"

    breaker.force_open()
    assert client.pttl(key) == -1  # an operator's decision does not expire

    breaker.force_close()
    assert not client.exists(key)  # closed with nothing to remember: nothing stored


@pytest.mark.needs_redis
@pytest.mark.parametrize("probes", [1, 3])
def test_eight_processes_hammering_a_half_open_breaker_get_at_most_k_probes(probes):
    name = f"hammer-{probes}"
    breaker = half_open(
        CircuitBreaker(name, failure_threshold=1, reset_timeout=0.3, half_open_probes=probes)
    )
    get_redis_connection("default").connection_pool.disconnect()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    barrier = context.Barrier(PROCESSES)
    workers = [
        context.Process(target=hammer_acquire, args=(name, probes, 200, barrier, queue))
        for _ in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    reports = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)

    assert all(status == "ok" for status, _ in reports), reports
    assert sum(admitted for _, admitted in reports) == probes
    assert breaker.snapshot()["probes_in_flight"] == probes
    assert acquire_or_none(breaker) is None
    assert all(worker.exitcode == 0 for worker in workers)


@pytest.mark.needs_redis
def test_a_probe_held_by_a_process_that_died_expires():
    name = "dead-prober"
    breaker = half_open(
        CircuitBreaker(name, failure_threshold=1, reset_timeout=0.3, probe_timeout=0.5)
    )
    get_redis_connection("default").connection_pool.disconnect()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=take_probe_and_die, args=(name, 0.5, queue))
    child.start()
    assert queue.get(timeout=60) == ("ok", True)
    child.join(timeout=30)

    assert breaker.snapshot()["probes_in_flight"] == 1
    assert wait_for(lambda: breaker.snapshot()["probes_in_flight"] == 0)
    probe = acquire_or_none(breaker)
    assert probe is not None and probe.probe
    breaker.record_success(probe)
    assert breaker.state() == "closed"


# --- Redis unreachable ------------------------------------------------------------------------


def test_with_redis_down_the_breaker_works_per_process_and_warns_once(settings, caplog):
    settings.CACHES = DEAD_REDIS
    settings.CACHE_DOWN_BACKOFF = 0  # try Redis on every call: still one warning
    breaker = CircuitBreaker("payments", failure_threshold=2, reset_timeout=0.3)

    with caplog.at_level(logging.WARNING, logger="shop.resilience"):
        assert breaker.state() == "closed"
        fail(breaker, 2)
        with pytest.raises(BreakerOpen):
            breaker.acquire()
        assert wait_for(lambda: breaker.state() == "half_open")
        breaker.record_success(breaker.acquire())
        assert breaker.snapshot()["state"] == "closed"

    unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(unreachable) == 1


@pytest.mark.needs_redis
def test_redis_back_after_an_outage_means_shared_state_again(settings):
    live = settings.CACHES
    settings.CACHES = DEAD_REDIS
    CircuitBreaker("payments").force_open()  # only this process's state
    settings.CACHES = live
    cache_health_reset()
    assert CircuitBreaker("payments").state() == "closed"


# --- Retry ------------------------------------------------------------------------------------


class Flaky:
    """Raises the given exceptions in turn, then returns "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, **kwargs) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def retriable_timeouts(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


def test_retriable_errors_are_retried_with_full_jitter_under_the_exponential_cap():
    slept: list[float] = []
    fn = Flaky(*[TimeoutError()] * 4)

    result = retry_call(
        fn,
        attempts=5,
        initial_delay=1.0,
        multiplier=2.0,
        max_delay=5.0,
        retriable=retriable_timeouts,
        sleep=slept.append,
        rng=random.Random(7),
    )

    assert result == "done"
    assert fn.calls == 5
    assert slept == list(backoff_delays(5, 1.0, 2.0, 5.0, random.Random(7)))
    caps = [1.0, 2.0, 4.0, 5.0]
    assert all(0 <= delay <= cap for delay, cap in zip(slept, caps, strict=True))


def test_full_jitter_spreads_over_the_whole_range():
    rng = random.Random(1)
    delays = [next(backoff_delays(2, 1.0, 2.0, 10.0, rng)) for _ in range(2000)]
    assert 0 <= min(delays) < 0.05
    assert 0.95 < max(delays) <= 1.0
    assert [backoff_cap(n, 1.0, 2.0, 10.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff_cap(5000, 1.0, 2.0, 10.0) == 10.0  # no overflow


def test_the_last_error_is_raised_after_the_last_attempt():
    slept: list[float] = []
    fn = Flaky(TimeoutError("1"), TimeoutError("2"), TimeoutError("3"))

    with pytest.raises(TimeoutError, match="3"):
        retry_call(fn, attempts=3, retriable=retriable_timeouts, sleep=slept.append)

    assert fn.calls == 3
    assert len(slept) == 2


def test_non_retriable_errors_are_raised_at_once():
    slept: list[float] = []
    fn = Flaky(ValueError("bad request"))

    with pytest.raises(ValueError):
        retry_call(fn, attempts=5, retriable=retriable_timeouts, sleep=slept.append)

    assert (fn.calls, slept) == (1, [])


def test_breaker_open_is_never_retried():
    slept: list[float] = []
    fn = Flaky(BreakerOpen("payments", 3.0))

    with pytest.raises(BreakerOpen):
        retry_call(fn, attempts=5, retriable=lambda exc: True, sleep=slept.append)

    assert (fn.calls, slept) == (1, [])


def test_breaker_open_wrapped_by_the_caller_is_not_retried_either():
    class Unavailable(Exception):
        pass

    def guarded():
        try:
            raise BreakerOpen("payments", 3.0)
        except BreakerOpen as exc:
            raise Unavailable("payments: circuit open") from exc

    fn = Flaky(TimeoutError())
    slept: list[float] = []

    def call():
        fn()
        guarded()

    with pytest.raises(Unavailable):
        retry_call(call, attempts=5, retriable=lambda exc: True, sleep=slept.append)

    assert fn.calls == 2  # the timeout was retried, the breaker's rejection was not
    assert len(slept) == 1


def test_retry_defaults_come_from_the_settings_and_arguments_reach_the_call(settings):
    settings.RETRY_ATTEMPTS = 4
    settings.RETRY_MAX_DELAY = 0.5
    slept: list[float] = []
    seen = []

    def fn(a, *, b):
        seen.append((a, b))
        if len(seen) < 4:
            raise TimeoutError
        return a + b

    assert retry_call(fn, 1, b=2, retriable=retriable_timeouts, sleep=slept.append) == 3
    assert seen == [(1, 2)] * 4
    assert len(slept) == 3
    assert all(0 <= delay <= 0.5 for delay in slept)


def test_retry_with_a_breaker_stops_when_it_opens():
    breaker = CircuitBreaker("carrier", failure_threshold=2, reset_timeout=60)
    fn = Flaky(*[TimeoutError()] * 10)

    with pytest.raises(BreakerOpen):
        retry_call(breaker.call, fn, attempts=5, retriable=retriable_timeouts, sleep=lambda _: None)

    assert fn.calls == 2


def test_at_least_one_attempt():
    with pytest.raises(ValueError):
        retry_call(Flaky(), attempts=0)
