"""Cache-aside reads that stay correct and keep serving when the cache misbehaves.

* **Versioned keys.** A value is stored under ``key@v1.v2`` where each ``v`` is the current
  version of a *group* it belongs to (``product:42``, ``catalog:listing``). Invalidation bumps
  a group's version after the writing transaction commits; readers then look up a new key. A
  reader that loaded old data just before the commit writes it under the old version, which
  nobody reads again, so a committed edit is never served stale.
* **Jittered TTLs** (±``CACHE_TTL_JITTER``) so keys written together do not expire together.
* **Stampede protection.** On a miss, one caller takes an owned lock and loads; the others wait
  for its value (up to ``CACHE_LOCK_WAIT``, then load themselves rather than fail).
* **Negative caching.** A loader returning ``None`` ("not found") is cached for
  ``CACHE_MISS_TTL`` so scans of missing ids do not reach the database.
* **Cache down ⇒ database.** Any cache error is logged, counted and answered from the loader;
  the process then skips the cache for ``CACHE_DOWN_BACKOFF`` seconds. Invalidations that
  cannot reach the cache are written to the database and retried by a periodic task.
* **No caching inside a write transaction.** A read in the middle of a transaction may see
  uncommitted data; it is answered from the database and never stored.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from shop.locks import OwnedLock
from shop.metrics import CACHE_ERRORS, CACHE_LOADS, CACHE_LOOKUPS

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a broken or unreachable cache raises (django-redis wraps most in ConnectionInterrupted).
CACHE_BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionInterrupted,
    RedisError,
    OSError,
)

# Stored in place of a value the loader did not find. A plain string survives every serializer.
_NOT_FOUND = "\x00shop-cache:not-found"
_MISS = object()


class CacheUnavailable(Exception):
    """The cache backend failed; the caller should answer from the source of truth."""


class _CacheHealth:
    """This process's view of whether the cache answers. Local on purpose: it only decides
    whether *this* process spends time trying the cache; nothing shared depends on it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, operation: str, exc: BaseException) -> None:
        CACHE_ERRORS.labels(operation).inc()
        with self._lock:
            first = self.available()
            self.down_until = time.monotonic() + settings.CACHE_DOWN_BACKOFF
        if first:
            logger.warning(
                "cache unavailable during %s (%s: %s); serving from the database for %.0f s",
                operation,
                type(exc).__name__,
                exc,
                settings.CACHE_DOWN_BACKOFF,
            )

    def reset(self) -> None:
        with self._lock:
            self.down_until = 0.0


_health = _CacheHealth()


def cache_available() -> bool:
    return _health.available()


def cache_health_reset() -> None:
    """Forget a previous cache failure (tests, and after an operator fixed Redis)."""
    _health.reset()


def cache_call(operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except CACHE_BACKEND_ERRORS as exc:
        _health.mark_down(operation, exc)
        raise CacheUnavailable(operation) from exc


#: At most one "Redis unreachable" warning per process and subsystem per this many seconds.
FALLBACK_WARNING_INTERVAL = 60.0


class FallbackWarning:
    """Says, at most once per process per FALLBACK_WARNING_INTERVAL, that a state shared
    through Redis is out of reach and this process is using its own: ``"<what> <name>: Redis
    unreachable (<cause>); <consequence>"`` on ``logger``."""

    def __init__(self, logger: logging.Logger, what: str, consequence: str) -> None:
        self._lock = threading.Lock()
        self._last: float | None = None
        self.logger, self.what, self.consequence = logger, what, consequence

    def warn(self, name: str, exc: BaseException | None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < FALLBACK_WARNING_INTERVAL:
                return
            self._last = now
        cause = f"{type(exc).__name__}: {exc}" if exc is not None else "marked down recently"
        self.logger.warning(
            "%s %r: Redis unreachable (%s); %s", self.what, name, cause, self.consequence
        )

    def reset(self) -> None:
        with self._lock:
            self._last = None


def cache_shared(
    operation: str, fallback: FallbackWarning, name: str, fn: Callable[..., T], *args: Any
) -> T | None:
    """``fn(*args)`` on the shared Redis state (through cache_call); None when Redis cannot be
    reached now or was marked down recently — the caller then uses this process's own state,
    and ``fallback`` says so (rate-limited)."""
    if cache_available():
        try:
            return cache_call(operation, fn, *args)
        except CacheUnavailable as exc:
            fallback.warn(name, exc.__cause__)
            return None
    fallback.warn(name, None)
    return None


def jittered_ttl(ttl: float) -> int:
    """``ttl`` seconds spread uniformly over ±CACHE_TTL_JITTER, at least 1."""
    spread = settings.CACHE_TTL_JITTER
    return max(1, round(ttl * random.uniform(1 - spread, 1 + spread)))  # noqa: S311


def version_key(group: str) -> str:
    return f"ver:{group}"


def _fresh_version() -> int:
    # Nanoseconds since the epoch: a version re-created after eviction or a flush never equals
    # an older one, so values written under the old version can never be read again.
    return time.time_ns()


def group_versions(groups: Sequence[str]) -> list[int]:
    """Current versions of ``groups``, creating missing ones. Raises CacheUnavailable."""
    if not groups:
        return []
    keys = [version_key(group) for group in groups]
    found = cache_call("get_versions", cache.get_many, keys)
    versions = []
    for key in keys:
        version = found.get(key)
        if version is None:
            cache_call("add_version", cache.add, key, _fresh_version(), settings.CACHE_VERSION_TTL)
            version = cache_call("get_version", cache.get, key) or _fresh_version()
        versions.append(int(version))
    return versions


def _bump(group: str) -> None:
    key = version_key(group)
    try:
        cache_call("bump_version", cache.incr, key)
    except ValueError:
        # No version yet: any fresh one invalidates. Lost a race to a reader creating it? Bump.
        if not cache_call(
            "add_version", cache.add, key, _fresh_version(), settings.CACHE_VERSION_TTL
        ):
            cache_call("bump_version", cache.incr, key)


_bump_listeners: list[Callable[[Sequence[str]], None]] = []


def bump_listener_add(listener: Callable[[Sequence[str]], None]) -> None:
    """Call ``listener(groups)`` after this process bumps groups (e.g. to drop what it keeps
    in memory at once rather than at its next check)."""
    _bump_listeners.append(listener)


def groups_bump(groups: Iterable[str]) -> list[str]:
    """Invalidate everything stored under ``groups`` now. Returns the groups it could not reach
    (the cache was down); those are recorded for :func:`pending_invalidations_retry`."""
    groups = list(groups)
    failed = []
    for group in groups:
        try:
            _bump(group)
        except CacheUnavailable:
            failed.append(group)
    for listener in _bump_listeners:
        listener(groups)
    if failed:
        from shop.models import PendingInvalidation

        PendingInvalidation.objects.bulk_create(
            [PendingInvalidation(group=group) for group in failed], ignore_conflicts=True
        )
        logger.warning("cache invalidation deferred for %d group(s): %s", len(failed), failed[:5])
    return failed


def invalidate_on_commit(*groups: str, using: str = "default") -> None:
    """Invalidate ``groups`` once the current transaction on ``using`` commits (now if none).

    A rolled-back transaction invalidates nothing, so it neither evicts nor lets a reader
    repopulate the cache with data that never existed.
    """
    frozen = tuple(groups)
    transaction.on_commit(lambda: groups_bump(frozen), using=using, robust=True)


def pending_invalidations_retry() -> int:
    """Bump every group whose invalidation could not reach the cache. Returns how many."""
    from shop.models import PendingInvalidation

    done = 0
    for pending in PendingInvalidation.objects.order_by("id")[:1000]:
        try:
            _bump(pending.group)
        except CacheUnavailable:
            break
        pending.delete()
        done += 1
    return done


def _in_write_transaction(using: str) -> bool:
    # The test runner wraps each test in atomic blocks marked `_from_testcase`; those are not
    # application transactions, so caching behaves in tests as it does in production.
    connection = transaction.get_connection(using)
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def versioned_key(key: str, groups: Sequence[str]) -> str:
    versions = group_versions(groups)
    return f"{key}@{'.'.join(str(v) for v in versions)}" if versions else key


def _unwrap(value: Any) -> Any:
    return None if value == _NOT_FOUND else value


def cache_fetch(
    key: str,
    loader: Callable[[], T | None],
    *,
    ttl: float,
    groups: Sequence[str] = (),
    miss_ttl: float | None = None,
    namespace: str = "",
    using: str = "default",
) -> T | None:
    """The cached value of ``key``, loading it at most once per process group on a miss.

    ``loader`` returns the value, or None for "does not exist" (cached for ``miss_ttl``, default
    CACHE_MISS_TTL). Never raises because of the cache: on any cache failure the loader's
    answer is returned.
    """
    if not _health.available() or _in_write_transaction(using):
        CACHE_LOOKUPS.labels("bypass").inc()
        return loader()
    try:
        full_key = versioned_key(key, groups)
        value = cache_call("get", cache.get, full_key, _MISS)
    except CacheUnavailable:
        CACHE_LOOKUPS.labels("bypass").inc()
        return loader()
    if value is not _MISS:
        CACHE_LOOKUPS.labels("hit").inc()
        return _unwrap(value)
    CACHE_LOOKUPS.labels("miss").inc()
    miss_ttl = settings.CACHE_MISS_TTL if miss_ttl is None else miss_ttl
    return _unwrap(_fill_once(full_key, loader, ttl=ttl, miss_ttl=miss_ttl, namespace=namespace))


def _fill_once(
    full_key: str,
    loader: Callable[[], Any],
    *,
    ttl: float,
    miss_ttl: float,
    namespace: str,
) -> Any:
    lock = OwnedLock(f"fill:{full_key}", ttl=settings.CACHE_LOCK_TTL)
    deadline = time.monotonic() + settings.CACHE_LOCK_WAIT
    delay = 0.002
    try:
        while True:
            if cache_call("lock", lock.acquire):
                try:
                    # Double-check: the previous holder may have stored it since our miss.
                    value = cache_call("get", cache.get, full_key, _MISS)
                    if value is _MISS:
                        value = _load_and_store(full_key, loader, ttl, miss_ttl, namespace)
                    return value
                finally:
                    _release_quietly(lock)
            if time.monotonic() >= deadline:
                logger.info("gave up waiting for the loader of %s; loading directly", full_key)
                return _load(loader, namespace)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            value = cache_call("get", cache.get, full_key, _MISS)
            if value is not _MISS:
                return value
    except CacheUnavailable:
        return _load(loader, namespace)


def _load(loader: Callable[[], Any], namespace: str) -> Any:
    CACHE_LOADS.labels(namespace or "other").inc()
    value = loader()
    return _NOT_FOUND if value is None else value


def _load_and_store(
    full_key: str, loader: Callable[[], Any], ttl: float, miss_ttl: float, namespace: str
) -> Any:
    value = _load(loader, namespace)
    timeout = jittered_ttl(miss_ttl if value == _NOT_FOUND else ttl)
    with contextlib.suppress(CacheUnavailable):  # logged and counted; the caller gets the value
        cache_call("set", cache.set, full_key, value, timeout)
    return value


def _release_quietly(lock: OwnedLock) -> None:
    with contextlib.suppress(CacheUnavailable):  # the lock expires on its own after its TTL
        cache_call("unlock", lock.release)


def versions_snapshot(groups: Iterable[str]) -> dict[str, int]:
    """Current versions of ``groups``. Take it *before* loading what you will store with
    :func:`cache_put_many`: if a write commits in between, the value lands under the old
    version and is never read. Raises CacheUnavailable."""
    unique = sorted(set(groups))
    return dict(zip(unique, group_versions(unique), strict=True))


def cache_put_many(
    entries: dict[str, tuple[Sequence[str], Any]], *, ttl: float, versions: dict[str, int]
) -> int:
    """Store values under versioned keys (preheat). ``entries`` maps a key to
    ``(groups, value)``; ``versions`` comes from :func:`versions_snapshot` taken before the
    values were loaded. Each value gets its own jittered TTL. Raises CacheUnavailable."""
    for key, (groups, value) in entries.items():
        suffix = ".".join(str(versions[group]) for group in groups)
        full_key = f"{key}@{suffix}" if groups else key
        cache_call("set", cache.set, full_key, value, jittered_ttl(ttl))
    return len(entries)


def cache_get_many(keys: Sequence[str]) -> dict[str, Any]:
    """Plain multi-get for short-lived, unversioned values; {} when the cache is down."""
    if not keys or not _health.available():
        return {}
    try:
        return cache_call("get_many", cache.get_many, list(keys))
    except CacheUnavailable:
        return {}


def cache_set_many(values: dict[str, Any], *, ttl: float) -> None:
    """Plain multi-set for short-lived, unversioned values; silently skipped when down."""
    if not values or not _health.available():
        return
    with contextlib.suppress(CacheUnavailable):
        cache_call("set_many", cache.set_many, values, max(1, round(ttl)))


_process_memos: list[ProcessMemo] = []


def process_memos_forget() -> None:
    """Drop every ProcessMemo's value (tests, after clearing the cache they were read from)."""
    for memo in _process_memos:
        memo.forget()


class ProcessMemo:
    """A :func:`cache_fetch`'d value this process keeps in memory, for a read on every request
    of a hot path (the category tree a checkout needs for "is this SKU on sale"): reused while
    its groups' versions are unchanged, and those are read again at most every
    ``PAGE_VERSION_CHECK_INTERVAL`` seconds -- one multi-get per interval instead of two round
    trips per read. An edit made elsewhere is seen within the interval (the page cache's bound
    for catalog edits); a bump made by this process at once. Inside a write transaction, and
    while the cache is unavailable, it reads through :func:`cache_fetch` as any caller would.
    Thread-safe: the memo is one tuple, replaced whole."""

    def __init__(self, key: str, loader: Callable[[], Any], *, ttl: Callable[[], float],
                 groups: Sequence[str], namespace: str) -> None:  # fmt: skip
        self.key, self.loader, self.ttl = key, loader, ttl
        self.groups, self.namespace = tuple(groups), namespace
        self._memo: tuple[list[int], float, Any] | None = None  # versions, checked at, value
        bump_listener_add(self._bumped)
        _process_memos.append(self)

    def _bumped(self, groups: Sequence[str]) -> None:
        if set(groups) & set(self.groups):
            self._memo = None

    def forget(self) -> None:
        self._memo = None

    def get(self) -> Any:
        memo = self._memo
        now = time.monotonic()
        if memo is not None and now - memo[1] < settings.PAGE_VERSION_CHECK_INTERVAL:
            return memo[2]
        if not _health.available() or _in_write_transaction("default"):
            return self._fetch()
        try:
            versions = group_versions(self.groups)
        except CacheUnavailable:
            self._memo = None
            return self._fetch()
        if memo is not None and memo[0] == versions:
            self._memo = (versions, now, memo[2])
            return memo[2]
        value = self._fetch()
        self._memo = (versions, now, value)
        return value

    def _fetch(self) -> Any:
        return cache_fetch(self.key, self.loader, ttl=self.ttl(), groups=self.groups,
                           namespace=self.namespace)  # fmt: skip
