"""DRF authentication that also tells the log context who is asking.

DRF authenticates lazily, inside the view, after every middleware has run; this is the first
place a token user's id is known. Session users are bound earlier by
``shop.logs.RequestIdMiddleware``.

A token's user is remembered in the process for ``AUTH_TOKEN_CACHE_TTL`` seconds: during a sale
the same buyers retry many times a second, and the token lookup was the one database query a
refused ("sold out") checkout still made. The price: a deleted token or a deactivated user is
still accepted by a process that saw it in the last few seconds.

The ``Authorization`` header is resolved once per request (:func:`request_token_user`): the
throttle (``shop.throttle``, which keys the per-client write limit on the authenticated user)
and DRF's authentication share the answer, so they agree on who is asking and a request pays
one lookup, not two.

Usernames are compared in one canonical form (:func:`username_canonical`): the login throttle,
registration and the login backend (``apps.users.backends``) all use it.
"""

from __future__ import annotations

import copy
import threading
import time
import unicodedata
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
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


def username_normalize(raw: str) -> str:
    """A username as it is stored: trimmed, then NFKC-normalised (what Django's
    ``normalize_username`` does, after the trim forms and serializers apply)."""
    return unicodedata.normalize("NFKC", raw.strip()).strip()


def username_canonical(raw: str) -> str:
    """The one form two spellings of a username are compared in: ``username_normalize``,
    then case-folded. "  Ｂｕｙｅｒ\t", "BUYER" and "buyer" are one name."""
    return username_normalize(raw).casefold()


class LogContextTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, binding the user id to the log context. Reuses the
    request's resolution when the throttle has made it already (:func:`request_token_user`)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        return request_token_user(request._request)

    def authenticate_credentials(self, key: str) -> tuple[Any, Any]:
        if "\x00" in key:  # no token has one, and PostgreSQL refuses it as a query parameter
            raise AuthenticationFailed("Invalid token.")
        ttl = settings.AUTH_TOKEN_CACHE_TTL
        if ttl <= 0:
            return super().authenticate_credentials(key)
        if (cached := token_cache.get(key)) is not None:
            return cached
        user, token = super().authenticate_credentials(key)  # only valid, active ones get here
        token_cache.put(key, user, token, ttl)
        return user, token


_authenticator = LogContextTokenAuthentication()
# Where a request keeps its resolved token: ((user, token) | None, failure detail | None).
_RESOLVED = "_shop_token_resolution"


def request_token_user(request: HttpRequest) -> tuple[Any, Any] | None:
    """The ``(user, token)`` of the request's ``Authorization: Token <key>`` header, parsed
    exactly as DRF's TokenAuthentication parses it (split on whitespace, the keyword in any
    case) and looked up through the per-process token cache; None when the request carries no
    token header (none at all, or another scheme). Raises ``AuthenticationFailed`` (401) for a
    malformed header, an unknown token or an inactive user's.

    Resolved once per request and kept on it, failure included: a second caller (the throttle,
    then DRF) gets the same answer without a second lookup. A database error is not kept (the
    next caller tries again and reports it)."""
    resolved = request.__dict__.get(_RESOLVED)
    if resolved is None:
        try:
            resolved = (TokenAuthentication.authenticate(_authenticator, request), None)
        except AuthenticationFailed as exc:
            resolved = (None, exc.detail)
        except UnicodeError:  # a header the test client could not encode as HTTP would
            resolved = (None, "Invalid token header.")
        setattr(request, _RESOLVED, resolved)
        if resolved[0] is not None:
            log_context_bind(user_id=resolved[0][0].pk)
    result, failure = resolved
    if failure is not None:
        raise AuthenticationFailed(failure)
    return result
