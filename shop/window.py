"""Sliding-window counters in Redis, shared by every process (e.g. a channel's live health).

The window is cut into buckets of ``bucket`` seconds, each a Redis hash that expires on its
own; reading sums the buckets of the last ``window`` seconds. Without Redis (embedded profile,
or Redis down) recording is skipped and reading returns None: callers fall back to defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.core.cache import cache
from django_redis import get_redis_connection

from shop.cache import CACHE_BACKEND_ERRORS
from shop.locks import cache_is_redis


@dataclass(frozen=True)
class WindowStats:
    ok: int
    failed: int
    latency_ms_total: int

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.total if self.total else None

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_total / self.total if self.total else None


class SlidingWindow:
    def __init__(self, name: str, *, window: int, bucket: int = 10) -> None:
        self.name = name
        self.window = window
        self.bucket = bucket

    def _key(self, start: int) -> str:
        return cache.make_key(f"window:{self.name}:{start}")

    def _starts(self, now: float) -> list[int]:
        newest = int(now) // self.bucket * self.bucket
        return [newest - i * self.bucket for i in range(self.window // self.bucket)]

    def record(self, *, ok: bool, latency_ms: int) -> None:
        if not cache_is_redis():
            return
        key = self._key(self._starts(time.time())[0])
        try:
            pipe = get_redis_connection("default").pipeline(transaction=False)
            pipe.hincrby(key, "ok" if ok else "failed", 1)
            pipe.hincrby(key, "latency", int(latency_ms))
            pipe.expire(key, self.window + self.bucket)
            pipe.execute()
        except CACHE_BACKEND_ERRORS:
            pass  # health is advisory; routing falls back to the configured figures

    def read(self) -> WindowStats | None:
        if not cache_is_redis():
            return None
        try:
            pipe = get_redis_connection("default").pipeline(transaction=False)
            for start in self._starts(time.time()):
                pipe.hgetall(self._key(start))
            buckets = pipe.execute()
        except CACHE_BACKEND_ERRORS:
            return None
        ok = failed = latency = 0
        for bucket in buckets:
            ok += int(bucket.get(b"ok", 0))
            failed += int(bucket.get(b"failed", 0))
            latency += int(bucket.get(b"latency", 0))
        return WindowStats(ok, failed, latency)
