"""Whole-response caching for anonymous readers of hot pages (a flash sale's landing traffic).

Two levels: an in-process **L1** (:class:`PageL1`, bounded by ``PAGE_L1_MAX_ENTRIES`` and
``PAGE_L1_MAX_BYTES``, thread-safe) in front of the shared **L2** in Redis.

:class:`PageCacheMiddleware` sits near the top of the middleware stack. For a *shareable*
request (GET, no ``Authorization`` header, no session or messages cookie) whose path matches
``PAGE_CACHE_PATHS`` it answers from the cache without running the rest of the stack:

* **Versions.** Every entry carries the versions of ``PAGE_CACHE_GROUPS`` read *before* its
  view ran; a committed catalog write bumps one of them, retiring every page built earlier
  (the same guarantee as ``shop.cache``). This process reuses the versions it last read for
  ``PAGE_VERSION_CHECK_INTERVAL`` seconds (one multi-get per interval, not one per request),
  and forgets them at once when it bumps a group itself. So a committed edit is served stale
  by no process for longer than ``PAGE_VERSION_CHECK_INTERVAL`` (never more than
  ``PAGE_CACHE_TTL``).
* **Freshness.** An entry is fresh for ``PAGE_CACHE_TTL`` seconds: that bounds what the
  versions do not cover, the stock figures on the page. Past it, an entry whose versions
  still match is *revalidated*: the page recorded what it showed (:func:`page_depends_on`,
  e.g. the units per SKU) and a registered check (:func:`page_dependency_register`) compares
  that with the current figures in one lookup. Unchanged: the entry is fresh again for
  ``PAGE_CACHE_TTL``, without re-rendering; changed: the page is built again. Revalidation
  stops ``PAGE_CACHE_MAX_AGE`` seconds after the page was built.
* **Lookups.** An L1 hit costs no Redis round trip. An L1 miss reads the L2 entry and the
  versions in one round trip; a hit there is copied into L1.

On a miss the request goes through as usual; if the view opted in with :func:`cacheable_page`
and the finished response is a plain 200 that sets no cookie, it is stored in both levels.
The L2 entry is kept for ``STALE_PAGE_TTL``: past its fresh spell (or once its groups
changed) it is what the ``serve_stale`` switch answers with during a sale.

Any cache failure falls through to the view; while this process believes the cache is down
(``shop.cache``) L1 is not used either, since it could not check the versions.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from shop.cache import (
    CacheUnavailable,
    bump_listener_add,
    cache_available,
    cache_call,
    group_versions,
    version_key,
)
from shop.runtime import switch_on

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]
PAGE_CACHE_HEADER = "X-Page-Cache"
# Headers of a stored response worth replaying; cookies never are.
_REPLAYED_HEADERS = ("Content-Type", "Content-Language", "X-Frame-Options", "Vary", "Allow")
_MAX_KEY_SOURCE = 1024
_MESSAGES_COOKIE = "messages"  # django.contrib.messages' cookie storage
# What an L1 entry costs besides its body (the dict, headers, key): counted against the bound.
_ENTRY_OVERHEAD = 1024


@functools.lru_cache(maxsize=4)
def _path_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def page_key(request: HttpRequest) -> str | None:
    """The shared cache key of this request, or None when it must not share a response."""
    if request.method != "GET" or "HTTP_AUTHORIZATION" in request.META:
        return None
    cookies = request.COOKIES
    if settings.SESSION_COOKIE_NAME in cookies or _MESSAGES_COOKIE in cookies:
        return None
    if not settings.PAGE_CACHE_PATHS or not _path_pattern(settings.PAGE_CACHE_PATHS).match(
        request.path_info
    ):
        return None
    # The host is part of the key: API pages carry absolute links.
    source = f"{request.get_host()}{request.get_full_path()}"
    if len(source) > _MAX_KEY_SOURCE:
        return None
    return "page:" + hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# --- L1: this process's bounded copy ----------------------------------------------------------


def _entry_size(entry: dict[str, Any]) -> int:
    return len(entry["content"]) + _ENTRY_OVERHEAD


class PageL1:
    """A bounded, thread-safe LRU of page entries. Entries are never mutated once stored (a
    revalidation stores a new dict), so a reader holding one needs no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        size = _entry_size(entry)
        max_entries, max_bytes = settings.PAGE_L1_MAX_ENTRIES, settings.PAGE_L1_MAX_BYTES
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _entry_size(old)
            if size > max_bytes or max_entries < 1:
                return
            self._entries[key] = entry
            self._bytes += size
            while len(self._entries) > max_entries or self._bytes > max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= _entry_size(evicted)

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _entry_size(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> tuple[int, int]:
        """(entries, bytes counted against PAGE_L1_MAX_BYTES)."""
        with self._lock:
            return len(self._entries), self._bytes


class _Versions:
    """The PAGE_CACHE_GROUPS versions as this process last read them, reused for
    PAGE_VERSION_CHECK_INTERVAL seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: list[int] | None = None
        self._read_at = 0.0

    def current(self) -> list[int]:
        """The versions, read again (one round trip) once the interval has passed.
        Raises CacheUnavailable."""
        versions, read_at = self._versions, self._read_at
        if versions is not None and time.monotonic() - read_at < _check_interval():
            return versions
        return self.remember(group_versions(settings.PAGE_CACHE_GROUPS))

    def remember(self, versions: list[int], *, read_at: float | None = None) -> list[int]:
        with self._lock:
            self._versions = versions
            self._read_at = time.monotonic() if read_at is None else read_at
        return versions

    def forget(self) -> None:
        with self._lock:
            self._versions = None


def _check_interval() -> float:
    return min(settings.PAGE_VERSION_CHECK_INTERVAL, settings.PAGE_CACHE_TTL)


page_l1 = PageL1()
_versions = _Versions()
# A bump made by this process is seen by its own next request, not an interval later.
bump_listener_add(lambda groups: _versions.forget())


def page_cache_local_reset() -> None:
    """Empty this process's L1 and forget the versions it read (tests)."""
    page_l1.clear()
    _versions.forget()


# --- What a page showed, and whether it still holds -------------------------------------------

# name -> check(shown) -> True while what the page showed is still current.
_dependencies: dict[str, Callable[[Any], bool]] = {}
# What the view of the current request recorded (None outside a cacheable request).
_shown: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "page_shown", default=None
)
# Stored in place of figures that could not be read (survives pickling, unlike a sentinel).
_UNCHECKABLE = "\x00page:uncheckable"


def page_dependency_register(name: str, check: Callable[[Any], bool]) -> None:
    """Let pages record ``name`` dependencies; ``check(shown)`` says whether what a page showed
    still holds (it may raise: then the page is built again)."""
    _dependencies[name] = check


def _switches_unchanged(shown: dict[str, bool]) -> bool:
    return all(switch_on(name) == on for name, on in shown.items())


def page_depends_on(name: str, values: dict[Any, Any] | None) -> None:
    """Record that the page being built shows ``values`` (merged over the request). None means
    the figures could not be read: the page is then never revalidated, only rebuilt."""
    shown = _shown.get()
    if shown is None:
        return
    if values is None or shown.get(name) == _UNCHECKABLE:
        shown[name] = _UNCHECKABLE
    else:
        shown.setdefault(name, {}).update(values)


# A switch flipped in another process bumps the page groups, but this process may build a page
# with its older view of the switches after that; such a page is not kept past its fresh spell.
page_dependency_register("switches", _switches_unchanged)


def _still_current(entry: dict[str, Any]) -> bool:
    shown = entry.get("shown")
    if shown is None or time.time() >= entry["built_at"] + settings.PAGE_CACHE_MAX_AGE:
        return False
    for name, values in shown.items():
        check = _dependencies.get(name)
        if check is None or values == _UNCHECKABLE:
            return False
        try:
            if not check(values):
                return False
        except Exception:
            logger.warning("page revalidation check %r failed; rebuilding", name, exc_info=True)
            return False
    return True


# --- The middleware ---------------------------------------------------------------------------


def cacheable_page(accept: Callable[[HttpRequest], bool] | None = None) -> Callable[[View], View]:
    """Let :class:`PageCacheMiddleware` store this view's responses for anonymous readers.

    ``accept(request)`` may refuse a request (searches: arbitrary text would fill the cache
    with pages nobody asks for twice). The page must depend only on ``PAGE_CACHE_GROUPS``
    data, the URL, data recorded with :func:`page_depends_on` and data that may be
    PAGE_CACHE_MAX_AGE seconds stale.
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if accept is None or accept(request):
                request.page_cache_allowed = True  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def _storable(request: HttpRequest, response: HttpResponse) -> bool:
    return (
        getattr(request, "page_cache_allowed", False)
        and response.status_code == 200
        and not response.streaming
        and not response.cookies
    )


def _replay(request: HttpRequest, entry: dict[str, Any], how: str) -> HttpResponse:
    response = HttpResponse(entry["content"])
    for name, value in entry["headers"].items():
        response[name] = value
    response[PAGE_CACHE_HEADER] = how
    request.metrics_route = entry.get("route")  # type: ignore[attr-defined]
    return response


def _fresh(entry: dict[str, Any], versions: list[int]) -> bool:
    return entry["versions"] == versions and time.time() < entry["fresh_until"]


def _revalidated(entry: dict[str, Any], versions: list[int]) -> dict[str, Any] | None:
    """A copy of ``entry`` fresh for another PAGE_CACHE_TTL if its versions match and what it
    showed still holds, else None."""
    if entry["versions"] != versions or not _still_current(entry):
        return None
    return {**entry, "fresh_until": time.time() + settings.PAGE_CACHE_TTL}


class PageCacheMiddleware:
    def __init__(self, get_response: View) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = page_key(request) if cache_available() else None
        if key is None:
            return self.get_response(request)
        local = page_l1.get(key)
        if local is not None:
            try:
                versions = _versions.current()
            except CacheUnavailable:
                return self.get_response(request)
            if _fresh(local, versions):
                return _replay(request, local, "hit")
            renewed = _revalidated(local, versions)
            if renewed is not None:
                page_l1.put(key, renewed)
                return _replay(request, renewed, "revalidated")

        try:
            entry, versions = self._shared(key)
        except CacheUnavailable:
            return self.get_response(request)
        if entry is not None:
            if _fresh(entry, versions):
                page_l1.put(key, entry)
                return _replay(request, entry, "hit")
            renewed = _revalidated(entry, versions)
            if renewed is not None:
                page_l1.put(key, renewed)
                return _replay(request, renewed, "revalidated")
            if switch_on("serve_stale"):
                return _replay(request, entry, "stale")
        return self._build(request, key, versions)

    @staticmethod
    def _shared(key: str) -> tuple[dict[str, Any] | None, list[int]]:
        """The L2 entry and the current group versions, in one round trip."""
        groups = settings.PAGE_CACHE_GROUPS
        version_keys = [version_key(group) for group in groups]
        read_at = time.monotonic()
        found = cache_call("page_get", cache.get_many, [key, *version_keys])
        if any(found.get(vk) is None for vk in version_keys):
            versions = group_versions(groups)  # creates the missing versions
        else:
            versions = [int(found[vk]) for vk in version_keys]
        _versions.remember(versions, read_at=read_at)
        return found.get(key), versions

    def _build(self, request: HttpRequest, key: str, versions: list[int]) -> HttpResponse:
        token = _shown.set({})
        try:
            built_at = time.time()
            response = self.get_response(request)
            shown = _shown.get()
        finally:
            _shown.reset(token)
        if _storable(request, response):
            match = getattr(request, "resolver_match", None)
            value = {
                "content": response.content,
                "headers": {h: response[h] for h in _REPLAYED_HEADERS if response.has_header(h)},
                "versions": versions,
                "built_at": built_at,
                "fresh_until": built_at + settings.PAGE_CACHE_TTL,
                "shown": shown,
                "route": match.view_name if match is not None else None,
            }
            page_l1.put(key, value)
            # One entry, kept for STALE_PAGE_TTL: fresh for PAGE_CACHE_TTL, then the copy the
            # "serve_stale" switch falls back on during a sale.
            with contextlib.suppress(CacheUnavailable):  # logged; the response is still good
                cache_call("page_set", cache.set, key, value, settings.STALE_PAGE_TTL)
        response[PAGE_CACHE_HEADER] = "miss"
        return response
