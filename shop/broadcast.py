"""Messages to every process: a per-process Redis pub/sub listener that dispatches to handlers.

Used to drop in-process caches at once when the truth changes elsewhere (the flash-sale
sold-out flag, the token cache). A handler is registered on a named channel (the Redis channel
is ``cache.make_key(name)``) with two callables: ``on_message(payload)`` for each message, and
``on_lost()``, called when the listener loses Redis and again when it has subscribed after a
loss (or after a handler failed): messages published meanwhile are gone, so a cache clears
everything it may have missed.

One daemon thread per process, started on first use after the fork (``broadcast_listen``);
a forked child forgets its parent's listener and starts its own. ``broadcast_subscribed_since``
tells a cache whether a message published now would reach this process, and since when:
an entry read before that moment may have missed its message.

A message published while no listener is subscribed is lost (Redis pub/sub keeps nothing):
the caches that rely on it bound what they trust by a TTL while not subscribed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django_redis import get_redis_connection

from shop.cache import CACHE_BACKEND_ERRORS
from shop.locks import cache_is_redis

logger = logging.getLogger(__name__)

# Pause before the listener reconnects after losing Redis (the caches fall back to their
# short TTLs meanwhile): a second is short for them and no reconnect storm for Redis.
RECONNECT_PAUSE = 1.0
# How long one wait for a message lasts before the listener looks for newly registered
# channels: a channel registered after the start is subscribed within this.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class _Handler:
    on_message: Callable[[str], None]
    on_lost: Callable[[], None]


_handlers: dict[str, _Handler] = {}
# Channel name → when (monotonic clock) this process's listener had it subscribed, while it is.
_subscribed_since: dict[str, float] = {}
_listener_lock = threading.Lock()
_listener_pid: int | None = None


def _forget_after_fork() -> None:
    global _listener_lock, _listener_pid
    _listener_lock = threading.Lock()  # another thread may have held it at the fork
    _listener_pid = None
    _subscribed_since.clear()  # the parent's listener thread did not come along


os.register_at_fork(after_in_child=_forget_after_fork)


def broadcast_channel(name: str) -> str:
    """The Redis channel of ``name`` (the cache's key prefix and version apply)."""
    return cache.make_key(name)


def broadcast_handler_register(
    name: str, *, on_message: Callable[[str], None], on_lost: Callable[[], None]
) -> None:
    """Dispatch messages on channel ``name`` to ``on_message`` (the payload as text), in the
    listener thread; ``on_lost`` as the module docstring says. One handler per name (a second
    registration replaces the first). Does not start the listener (``broadcast_listen``)."""
    _handlers[name] = _Handler(on_message=on_message, on_lost=on_lost)


def broadcast_listen() -> None:
    """Start this process's listener if it has none (cheap when it has: one pid compare).
    Nothing without Redis as the cache."""
    global _listener_pid
    pid = os.getpid()
    if _listener_pid == pid:
        return
    if not cache_is_redis():
        return
    with _listener_lock:
        if _listener_pid == pid:
            return
        _listener_pid = pid
        threading.Thread(target=_listen, name="shop-broadcast", daemon=True).start()


def broadcast_subscribed_since(name: str) -> float | None:
    """When (``time.monotonic()``) this process's listener subscribed to ``name``, if it is
    subscribed now; None otherwise (not started, not yet connected, Redis lost). A message
    published after that moment reaches this process's handler."""
    if _listener_pid != os.getpid():
        return None
    return _subscribed_since.get(name)


def broadcast_publish(name: str, payload: str | int) -> bool:
    """Publish ``payload`` on channel ``name`` to every process's listener. Never raises:
    with Redis down (or not the cache) logs and returns False — the receivers' caches then
    live out their TTLs."""
    if not cache_is_redis():
        return False
    try:
        get_redis_connection("default").publish(broadcast_channel(name), payload)
    except CACHE_BACKEND_ERRORS as exc:
        logger.warning("broadcast on %s lost (%s): receivers rely on their TTLs", name, exc)
        return False
    return True


def _listener_redis() -> Any:
    """The Redis client the listener subscribes with (the cache's server)."""
    return get_redis_connection("default")


def _all_lost() -> None:
    _subscribed_since.clear()
    for handler in list(_handlers.values()):
        _call(handler.on_lost)


def _call(function: Callable[..., None], *args: Any) -> bool:
    try:
        function(*args)
    except Exception:  # a handler's bug must not stop the other handlers' messages
        logger.exception("broadcast handler %r failed", function)
        return False
    return True


def _dispatch(channels: dict[str, str], message: dict[str, Any], reconnected: bool) -> None:
    raw_channel = message["channel"]
    key = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
    name = channels.get(key)
    handler = _handlers.get(name) if name is not None else None
    if handler is None:
        return
    if message["type"] == "subscribe":
        if reconnected or name in _subscribed_since:  # redis-py re-subscribed after a loss
            _call(handler.on_lost)
        _subscribed_since[name] = time.monotonic()
    elif message["type"] == "message":
        data = message["data"]
        payload = data.decode() if isinstance(data, bytes) else str(data)
        if not _call(handler.on_message, payload):
            _call(handler.on_lost)  # the message may not have been applied


def _listen() -> None:
    reconnected = False  # a subscription from now on follows a loss: its handler clears
    down = False  # lost, and not subscribed again yet: the handlers were told once
    while True:
        pubsub = None
        try:
            pubsub = _listener_redis().pubsub()
            channels: dict[str, str] = {}  # Redis channel → name
            while True:
                wanted = [name for name in list(_handlers) if name not in channels.values()]
                if wanted:
                    keys = {broadcast_channel(name): name for name in wanted}
                    pubsub.subscribe(*keys)
                    channels.update(keys)
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is not None:
                    _dispatch(channels, message, reconnected)
                    down = False
        except Exception as exc:  # the thread must outlive anything: a dead listener
            # would leave the caches trusting entries whose invalidation never arrives
            if not down:  # once per outage, not at each failed reconnect
                if isinstance(exc, CACHE_BACKEND_ERRORS):
                    logger.info("broadcast listener lost Redis (%s); caches use TTLs", exc)
                else:  # e.g. the connection closed under it by another thread
                    logger.warning("broadcast listener failed; reconnecting", exc_info=True)
                _all_lost()
            reconnected = down = True
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()
            time.sleep(RECONNECT_PAUSE)
