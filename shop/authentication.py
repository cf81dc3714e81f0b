"""DRF authentication that also tells the log context who is asking.

DRF authenticates lazily, inside the view, after every middleware has run; this is the first
place a token user's id is known. Session users are bound earlier by
``shop.logs.RequestIdMiddleware``.

A token's user is remembered in the process: during a sale the same buyers retry many times
a second, and the token lookup was the one database query a refused ("sold out") checkout
still made. How long an entry is trusted depends on whether a revocation would reach this
process:

- ``AUTH_TOKEN_CACHE_TTL_SUBSCRIBED`` (120 s) while this process's broadcast listener
  (``shop.broadcast``) is subscribed to the "token revoked" channel, and has been since before
  the entry was looked up: a revocation then drops the entry at once, in every process;
- ``AUTH_TOKEN_CACHE_TTL`` (5 s) otherwise (listener not connected yet, Redis lost, no Redis):
  a deleted token or a deactivated user may still be accepted that long.

A revocation is published (after the commit) when a Token is deleted, a user is saved
inactive or with a new password, or a user is deleted — by the model signals connected in
``apps.users.apps`` (signals here are cache invalidation, not business flow), and by
:func:`token_revoke_users`, which code that bypasses signals must call (a bulk
``QuerySet.update(is_active=False)`` or ``.update(password=...)``); without it such an update
is seen within ``AUTH_TOKEN_CACHE_TTL_SUBSCRIBED`` at worst. A revocation whose publish fails
(Redis down) is not lost for long: the listeners have then lost Redis too, and while not
subscribed they trust an entry only ``AUTH_TOKEN_CACHE_TTL``.

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
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from shop.broadcast import (
    broadcast_handler_register,
    broadcast_listen,
    broadcast_publish,
    broadcast_subscribed_since,
)
from shop.logs import log_context_bind

# Entries kept at most; past it the oldest half goes (tokens of buyers who stopped asking).
TOKEN_CACHE_SIZE = 20_000
# The broadcast channel of revocations; its payload: user ids, comma-separated.
REVOCATION_CHANNEL = "auth:token-revoked"


def _user_copy(user: Any) -> Any:
    """A copy of a cached user for one request (a view may set attributes on request.user):
    what ``copy.copy`` makes of a model instance (its state and related-object cache copied,
    as ``Model.__setstate__`` does), at half the cost -- it is on every authenticated request."""
    clone = user.__class__.__new__(user.__class__)
    fields = user.__dict__.copy()
    state = fields["_state"] = copy.copy(fields["_state"])
    state.fields_cache = state.fields_cache.copy()
    clone.__dict__ = fields
    return clone


class _TokenCache:
    """Token key → (when its lookup started, user, token), thread-safe. An entry is judged at
    each read against the TTLs and the listener's state then (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Any, Any]] = {}
        self._keys_of_user: dict[Any, set[str]] = {}
        # User id → when its last revocation arrived: a lookup started before it may have read
        # the row before the change, and is not cached.
        self._revoked_at: dict[Any, float] = {}

    def get(
        self, key: str, *, ttl: float, ttl_subscribed: float, since: float | None
    ) -> tuple[Any, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        started, user, token = entry
        trusted = ttl
        if since is not None and since <= started:
            trusted = max(ttl, ttl_subscribed)
        if started + trusted <= time.monotonic():
            return None
        return _user_copy(user), token

    def put(self, key: str, user: Any, token: Any, started: float) -> None:
        with self._lock:
            if self._revoked_at.get(user.pk, -1.0) >= started:
                return  # revoked while this lookup ran: it may have read the old row
            if len(self._entries) >= TOKEN_CACHE_SIZE:
                for old in list(self._entries)[: TOKEN_CACHE_SIZE // 2]:
                    self._forget(old)
            self._entries[key] = (started, copy.copy(user), token)
            self._keys_of_user.setdefault(user.pk, set()).add(key)

    def _forget(self, key: str) -> None:
        _, user, _ = self._entries.pop(key)
        keys = self._keys_of_user.get(user.pk)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of_user[user.pk]

    def drop_users(self, user_ids: list[Any]) -> None:
        """Forget every entry of these users, and refuse to cache lookups already running."""
        now = time.monotonic()
        with self._lock:
            if len(self._revoked_at) >= TOKEN_CACHE_SIZE:
                self._revoked_at.clear()  # lookups run for milliseconds: old marks are moot
            for user_id in user_ids:
                self._revoked_at[user_id] = now
                for key in list(self._keys_of_user.get(user_id, ())):
                    self._forget(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._keys_of_user.clear()

    def __len__(self) -> int:
        return len(self._entries)


token_cache = _TokenCache()


def _on_token_revoked(payload: str) -> None:
    user_ids = []
    for part in payload.split(","):
        try:
            user_ids.append(int(part))
        except ValueError:
            token_cache.clear()  # not ours to parse: forget everything rather than miss one
            return
    token_cache.drop_users(user_ids)


broadcast_handler_register(
    REVOCATION_CHANNEL, on_message=_on_token_revoked, on_lost=token_cache.clear
)


def token_revoke_users(*, user_ids: Iterable[int], using: str = "default") -> None:
    """Make every process forget the cached tokens of these users, once the current
    transaction on ``using`` commits (at once outside one): this process at once, the others
    through the broadcast. Call it after changing users or tokens behind the model signals'
    back (``QuerySet.update``, raw SQL). Idempotent; never raises (Redis down: logged, and
    the other processes' entries live out ``AUTH_TOKEN_CACHE_TTL`` at most, as their
    listeners are then not subscribed)."""
    ids = sorted({int(user_id) for user_id in user_ids})
    if not ids:
        return

    def revoke() -> None:
        token_cache.drop_users(ids)
        broadcast_publish(REVOCATION_CHANNEL, ",".join(map(str, ids)))

    transaction.on_commit(revoke, using=using)


def token_revoked_on_token_delete(sender: Any, instance: Any, using: str, **_: Any) -> None:
    """post_delete of DRF's Token: its user's cached entries go."""
    token_revoke_users(user_ids=[instance.user_id], using=using)


def token_snapshot_on_user_init(sender: Any, instance: Any, **_: Any) -> None:
    """post_init of the user model: remember the password as loaded, to tell a new one.
    Reads ``__dict__`` (a deferred field is not loaded for this)."""
    instance._token_password_loaded = instance.__dict__.get("password")


def token_revoked_on_user_save(
    sender: Any,
    instance: Any,
    created: bool,
    using: str,
    update_fields: frozenset[str] | None = None,
    **_: Any,
) -> None:
    """post_save of the user model: a user saved inactive, or with another password than it
    was loaded with, has its cached entries dropped (the lookup then decides)."""
    if created:
        return
    if update_fields is not None and not {"is_active", "password"} & set(update_fields):
        return  # e.g. login's last_login update
    password = instance.__dict__.get("password")
    loaded = getattr(instance, "_token_password_loaded", None)
    changed_password = password is not None and password != loaded
    if instance.__dict__.get("is_active", True) is False or changed_password:
        token_revoke_users(user_ids=[instance.pk], using=using)
    instance._token_password_loaded = password


def token_revoked_on_user_delete(sender: Any, instance: Any, using: str, **_: Any) -> None:
    """post_delete of the user model."""
    token_revoke_users(user_ids=[instance.pk], using=using)


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
        ttl_subscribed = settings.AUTH_TOKEN_CACHE_TTL_SUBSCRIBED
        if ttl <= 0 and ttl_subscribed <= 0:
            return super().authenticate_credentials(key)
        since = None
        if ttl_subscribed > 0:
            broadcast_listen()
            since = broadcast_subscribed_since(REVOCATION_CHANNEL)
        cached = token_cache.get(key, ttl=ttl, ttl_subscribed=ttl_subscribed, since=since)
        if cached is not None:
            return cached
        started = time.monotonic()
        user, token = super().authenticate_credentials(key)  # only valid, active ones get here
        token_cache.put(key, user, token, started)
        return user, token


_authenticator = LogContextTokenAuthentication()
# Where a request keeps its resolved token: ((user, token) | None, failure detail | None).
_RESOLVED = "_shop_token_resolution"


class _AuthorizationHeader:
    """What DRF's TokenAuthentication.authenticate reads of a request (its Authorization
    header, as ``request.headers``), without building the request's whole ``headers`` mapping
    -- this runs on every token request, a flash sale's refusals included."""

    __slots__ = ("headers",)

    def __init__(self, value: str | bytes) -> None:
        self.headers = {"authorization": value}


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
            header = _AuthorizationHeader(request.META.get("HTTP_AUTHORIZATION", b""))
            resolved = (TokenAuthentication.authenticate(_authenticator, header), None)
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
