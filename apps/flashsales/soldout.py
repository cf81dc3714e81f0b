"""The in-process sold-out flag of each flash-sale SKU.

After the sell-out a sale's crowd keeps trying; each refusal would cost a trip to Redis. Once
the gate itself answers "sold out" with nothing left, this process refuses the SKU's checkouts
by itself for ``FLASH_SOLD_OUT_TTL`` seconds (1 s): no Redis, no SQL. Except the retries of
attempts the gate admitted: that answer lists them ("user:key"), and they still go to the
gate, which replays their admission — the same key keeps getting the same answer.

Anything that gives the gate units again — a sale (re)started, its counters rebuilt or
repaired, units given back by a rejected ticket, the sale ended — publishes the SKU on a Redis
channel, and every process's listener clears its flag at once; a lost message (a listener
reconnecting) costs at most the TTL. A flag can only make the gate refuse early (a lost sale
for at most the TTL), never admit more than the gate would.

Thread-safe: the flags are one dict whose single-key reads and writes are atomic; the listener
is one daemon thread per process, started after the fork on first use.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection

from shop.cache import CACHE_BACKEND_ERRORS
from shop.locks import cache_is_redis

logger = logging.getLogger(__name__)

# Pause before the listener reconnects after losing Redis (its flags expire meanwhile).
RECONNECT_PAUSE = 1.0

# SKU id → (flag's end on the monotonic clock, the attempts admitted before it, "user:key").
_flags: dict[int, tuple[float, frozenset[str]]] = {}
_listener_lock = threading.Lock()
_listener_pid: int | None = None


def channel() -> str:
    return cache.make_key("gate:changed")


def sold_out_refuses(sku_id: int, attempt: str) -> bool:
    """Whether this process refuses ``attempt`` ("user:key") for the SKU by itself: the SKU
    is flagged sold out and the attempt is not one the gate admitted (a retry of an admitted
    one goes on to the gate, which replays its admission)."""
    flag = _flags.get(sku_id)
    return flag is not None and flag[0] > time.monotonic() and attempt not in flag[1]


def sold_out_set(sku_id: int, admitted: frozenset[str]) -> None:
    """Flag the SKU sold out for FLASH_SOLD_OUT_TTL seconds; ``admitted``: the attempts the
    gate had admitted, still sent to it."""
    ttl = settings.FLASH_SOLD_OUT_TTL
    if ttl <= 0 or not cache_is_redis():
        return
    _listener_ensure()
    _flags[sku_id] = (time.monotonic() + ttl, admitted)


def sold_out_clear(sku_id: int | None = None) -> None:
    """Forget the flag of one SKU (all with None)."""
    if sku_id is None:
        _flags.clear()
    else:
        _flags.pop(sku_id, None)


def _listener_ensure() -> None:
    global _listener_pid
    pid = os.getpid()
    if _listener_pid == pid:
        return
    with _listener_lock:
        if _listener_pid == pid:
            return
        _listener_pid = pid  # a forked child has none: it starts its own
        threading.Thread(target=_listen, name="flash-sold-out", daemon=True).start()


def _listen() -> None:
    reconnecting = False
    while True:
        try:
            pubsub = get_redis_connection("default").pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(channel())
            if reconnecting:  # messages sent while this listener was away are lost
                sold_out_clear()
            reconnecting = True
            for message in pubsub.listen():
                try:
                    sold_out_clear(int(message["data"]))
                except (TypeError, ValueError):
                    sold_out_clear()
        except CACHE_BACKEND_ERRORS as exc:
            logger.info("sold-out listener lost Redis (%s); flags expire on their own", exc)
            sold_out_clear()
            time.sleep(RECONNECT_PAUSE)
