"""Reading what the cache backend really stores (TTLs), for assertions."""

from __future__ import annotations

import time

from django.core.cache import cache

from shop.locks import cache_is_redis


def remaining_ttl(key: str) -> float:
    """Seconds until ``key`` (a key as passed to the cache API) expires."""
    if cache_is_redis():
        return float(cache.pttl(key)) / 1000
    expiry = cache._expire_info[cache.make_key(key)]  # local-memory backend internals
    return expiry - time.time()
