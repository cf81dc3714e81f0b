"""Short-lived locks in the shared cache that only their owner can release.

On Redis: ``SET key token NX PX ttl`` to take it and a compare-and-delete Lua script to release,
so a holder whose lock expired (and was taken by someone else) cannot release the new holder's
lock. On other cache backends (the embedded local-memory cache, one process) ``cache.add`` plus
a token check gives the same contract within that process.

Errors from the cache backend propagate; callers decide whether to fail open or closed.
"""

from __future__ import annotations

import secrets

from django.core.cache import cache, caches
from django_redis import get_redis_connection
from django_redis.cache import RedisCache

# KEYS[1] = lock key, ARGV[1] = owner token. Deletes only when the caller still owns it.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def cache_is_redis() -> bool:
    return isinstance(caches["default"], RedisCache)


class OwnedLock:
    """A lock named ``name`` held for at most ``ttl`` seconds, released only by its owner."""

    def __init__(self, name: str, *, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lock needs a positive ttl")
        self.name = f"lock:{name}"
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self.held = False

    def acquire(self) -> bool:
        """Try once, without waiting. True if this instance now holds the lock."""
        if cache_is_redis():
            client = get_redis_connection("default")
            acquired = bool(
                client.set(cache.make_key(self.name), self.token, nx=True, px=self._ttl_ms())
            )
        else:
            acquired = cache.add(self.name, self.token, timeout=self.ttl)
        self.held = acquired
        return acquired

    def release(self) -> bool:
        """Release if still ours. False when it expired and someone else (or nobody) holds it."""
        self.held = False
        if cache_is_redis():
            client = get_redis_connection("default")
            script = client.register_script(_RELEASE_SCRIPT)
            return bool(script(keys=[cache.make_key(self.name)], args=[self.token]))
        if cache.get(self.name) == self.token:
            cache.delete(self.name)
            return True
        return False

    def owner_token(self) -> str | None:
        """The token of whoever holds the lock now (None if free); for diagnostics and tests."""
        if cache_is_redis():
            raw = get_redis_connection("default").get(cache.make_key(self.name))
            return raw.decode() if raw is not None else None
        return cache.get(self.name)

    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))
