"""DRF authentication that also tells the log context who is asking.

DRF authenticates lazily, inside the view, after every middleware has run; this is the first
place a token user's id is known. Session users are bound earlier by
``shop.logs.RequestIdMiddleware``.

A token's user is remembered in the process for ``AUTH_TOKEN_CACHE_TTL`` seconds: during a sale
the same buyers retry many times a second, and the token lookup was the one database query a
refused ("sold out") checkout still made. The price: a deleted token or a deactivated user is
still accepted by a process that saw it in the last few seconds.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from django.conf import settings
from rest_framework.authentication import TokenAuthentication
from rest_framework.request import Request

from shop.logs import log_context_bind

# Entries kept at most; past it the oldest half goes (tokens of buyers who stopped asking).
TOKEN_CACHE_SIZE = 20_000


class _TokenCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Any, Any]] = {}

    def get(self, key: str) -> tuple[Any, Any] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        # a copy: a view may set attributes on request.user
        return copy.copy(entry[1]), entry[2]

    def put(self, key: str, user: Any, token: Any, ttl: float) -> None:
        with self._lock:
            if len(self._entries) >= TOKEN_CACHE_SIZE:
                for old in list(self._entries)[: TOKEN_CACHE_SIZE // 2]:
                    del self._entries[old]
            self._entries[key] = (time.monotonic() + ttl, copy.copy(user), token)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


token_cache = _TokenCache()


class LogContextTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, binding the user id to the log context."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        result = super().authenticate(request)
        if result is not None:
            log_context_bind(user_id=result[0].pk)
        return result

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        ttl = settings.AUTH_TOKEN_CACHE_TTL
        if ttl <= 0:
            return super().authenticate_credentials(key)
        if (cached := token_cache.get(key)) is not None:
            return cached
        user, token = super().authenticate_credentials(key)  # only valid, active ones get here
        token_cache.put(key, user, token, ttl)
        return user, token
