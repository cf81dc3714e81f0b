"""Forked-process bodies and clock helpers for the rate limiter tests."""

from __future__ import annotations

import time

from django_redis import get_redis_connection

from shop.ratelimit import Limit, gcra_check


def redis_now() -> float:
    """The Redis server's clock (what the limiter's script reads), in seconds."""
    seconds, micros = get_redis_connection("default").time()
    return seconds + micros / 1e6


def hammer_limit(key: str, limit: Limit, tries: int, spacing: float, barrier, queue) -> None:
    """Child: ``tries`` checks of ``limit`` on ``key``, one every ``spacing`` seconds.

    Reports ("ok", admitted, degraded, first, last): ``first`` is the Redis time read just
    before the earliest admitted check and ``last`` the one read just after the latest, so
    every admitted request was decided on the Redis clock within [first, last].
    """
    try:
        # A forked child must not share the parent's sockets.
        get_redis_connection("default").connection_pool.disconnect()
        barrier.wait(timeout=30)
        start = time.monotonic()
        admitted = degraded = 0
        first = last = None
        for i in range(tries):
            delay = start + i * spacing - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            before = redis_now()
            decision = gcra_check(key, limit, layer="test-hammer")
            degraded += decision.degraded
            if decision.allowed:
                admitted += 1
                if first is None:
                    first = before
                last = redis_now()
        queue.put(("ok", admitted, degraded, first, last))
    except Exception as exc:
        queue.put(("error", repr(exc), 0, None, None))
