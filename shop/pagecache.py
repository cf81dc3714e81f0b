"""Whole-response caching for anonymous readers of hot pages (a flash sale's landing traffic).

:class:`PageCacheMiddleware` sits near the top of the middleware stack. For a *shareable*
request (GET, no ``Authorization`` header, no session or messages cookie) whose path
matches ``PAGE_CACHE_PATHS`` it reads the stored response and the current versions of
``PAGE_CACHE_GROUPS`` in one round trip, and answers a hit without running the rest of the
stack. On a miss the request goes through as usual; if the view opted in with
:func:`cacheable_page` and the finished response is a plain 200 that sets no cookie, it is
stored together with the versions read *before* the view ran. A write that commits bumps a
group version, so every page built earlier stops being served at once — the same guarantee
as ``shop.cache``. ``PAGE_CACHE_TTL`` bounds the staleness of what the groups do not cover
(stock figures on the page). The entry itself is kept for ``STALE_PAGE_TTL``: past its fresh
spell (or once its groups changed) it is what the ``serve_stale`` switch answers with during
a sale — one key and one write per page, not a fresh copy and a stale copy.

Any cache failure falls through to the view.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from shop.cache import (
    CacheUnavailable,
    cache_available,
    cache_call,
    group_versions,
    version_key,
)
from shop.runtime import switch_on

View = Callable[..., HttpResponse]
PAGE_CACHE_HEADER = "X-Page-Cache"
# Headers of a stored response worth replaying; cookies never are.
_REPLAYED_HEADERS = ("Content-Type", "Content-Language", "X-Frame-Options", "Vary", "Allow")
_MAX_KEY_SOURCE = 1024
_MESSAGES_COOKIE = "messages"  # django.contrib.messages' cookie storage


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


def _lookup(key: str) -> tuple[dict[str, Any] | None, bool, list[int]]:
    """The stored entry (if any), whether it is still fresh — its groups unchanged and
    younger than PAGE_CACHE_TTL — and the current group versions (one round trip)."""
    groups = settings.PAGE_CACHE_GROUPS
    version_keys = [version_key(group) for group in groups]
    found = cache_call("page_get", cache.get_many, [key, *version_keys])
    entry = found.get(key)
    if any(found.get(vk) is None for vk in version_keys):
        return entry, False, group_versions(groups)  # creates the missing versions
    versions = [int(found[vk]) for vk in version_keys]
    fresh = (
        entry is not None
        and entry.get("versions") == versions
        and time.time() < entry.get("fresh_until", 0)
    )
    return entry, fresh, versions


def cacheable_page(accept: Callable[[HttpRequest], bool] | None = None) -> Callable[[View], View]:
    """Let :class:`PageCacheMiddleware` store this view's responses for anonymous readers.

    ``accept(request)`` may refuse a request (searches: arbitrary text would fill the cache
    with pages nobody asks for twice). The page must depend only on ``PAGE_CACHE_GROUPS``
    data, the URL and data that may be PAGE_CACHE_TTL seconds stale.
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


def _replay(entry: dict[str, Any], how: str) -> HttpResponse:
    response = HttpResponse(entry["content"])
    for name, value in entry["headers"].items():
        response[name] = value
    response[PAGE_CACHE_HEADER] = how
    return response


class PageCacheMiddleware:
    def __init__(self, get_response: View) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = page_key(request) if cache_available() else None
        if key is None:
            return self.get_response(request)
        try:
            entry, fresh, versions = _lookup(key)
        except CacheUnavailable:
            return self.get_response(request)
        if fresh:
            return _replay(entry, "hit")
        if entry is not None and switch_on("serve_stale"):
            return _replay(entry, "stale")

        response = self.get_response(request)
        if _storable(request, response):
            value = {
                "content": response.content,
                "headers": {h: response[h] for h in _REPLAYED_HEADERS if response.has_header(h)},
                "versions": versions,
                "fresh_until": time.time() + settings.PAGE_CACHE_TTL,
            }
            # One entry, kept for STALE_PAGE_TTL: fresh for PAGE_CACHE_TTL, then the copy the
            # "serve_stale" switch falls back on during a sale.
            with contextlib.suppress(CacheUnavailable):  # logged; the response is still good
                cache_call("page_set", cache.set, key, value, settings.STALE_PAGE_TTL)
        response[PAGE_CACHE_HEADER] = "miss"
        return response
