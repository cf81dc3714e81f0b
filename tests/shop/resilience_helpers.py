"""Polling, cache profiles and forked-process bodies for the circuit breaker tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from django_redis import get_redis_connection

from shop.resilience import BreakerOpen, CircuitBreaker

# A port nothing listens on: connections are refused at once, like a Redis that died.
DEAD_REDIS = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
    }
}
# The embedded profile's cache: breakers keep per-process state.
LOCAL_MEMORY = {
    "default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "resilience-tests",
    }
}


def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; returns its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def acquire_or_none(breaker: CircuitBreaker):
    try:
        return breaker.acquire()
    except BreakerOpen:
        return None


def _fresh_redis_connections() -> None:
    """A forked child must not share the parent's sockets."""
    get_redis_connection("default").connection_pool.disconnect()


def hammer_acquire(name: str, probes: int, tries: int, barrier, queue) -> None:
    """Child: ``tries`` acquires on breaker ``name`` as fast as possible; reports the admitted
    ones (never recorded, so every admitted probe keeps its slot)."""
    try:
        _fresh_redis_connections()
        breaker = CircuitBreaker(name, half_open_probes=probes, reset_timeout=0.3, probe_timeout=60)
        barrier.wait(timeout=30)
        admitted = sum(acquire_or_none(breaker) is not None for _ in range(tries))
        queue.put(("ok", admitted))
    except Exception as exc:
        queue.put(("error", repr(exc)))


def take_probe_and_die(name: str, probe_timeout: float, queue) -> None:
    """Child: take a half-open probe slot, then die without recording its outcome."""
    try:
        _fresh_redis_connections()
        breaker = CircuitBreaker(name, reset_timeout=0.3, probe_timeout=probe_timeout)
        permit = breaker.acquire()
        queue.put(("ok", permit.probe))
    except Exception as exc:
        queue.put(("error", repr(exc)))
    queue.close()
    queue.join_thread()  # the report must leave before the process vanishes
    os._exit(0)  # no cleanup of any kind, like a killed worker
