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
is the kernel's (``shop.broadcast``): one daemon thread per process, started after the fork
on first use.
"""

from __future__ import annotations

import time

from django.conf import settings

from shop.broadcast import broadcast_channel, broadcast_handler_register, broadcast_listen
from shop.locks import cache_is_redis

# The broadcast channel: the gate's scripts publish the SKU id on it (apps.flashsales.gate).
CHANNEL = "gate:changed"

# SKU id → (flag's end on the monotonic clock, the attempts admitted before it, "user:key").
_flags: dict[int, tuple[float, frozenset[str]]] = {}


def channel() -> str:
    return broadcast_channel(CHANNEL)


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
    broadcast_listen()
    _flags[sku_id] = (time.monotonic() + ttl, admitted)


def sold_out_clear(sku_id: int | None = None) -> None:
    """Forget the flag of one SKU (all with None)."""
    if sku_id is None:
        _flags.clear()
    else:
        _flags.pop(sku_id, None)


def _on_message(payload: str) -> None:
    try:
        sold_out_clear(int(payload))
    except ValueError:
        sold_out_clear()


# A lost listener (messages gone meanwhile) forgets every flag.
broadcast_handler_register(CHANNEL, on_message=_on_message, on_lost=sold_out_clear)
