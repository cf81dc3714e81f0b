"""The flash-sale stock gate: admission in Redis, one atomic Lua call per attempt.

For a SKU on flash sale the gate keeps four counters (each with a TTL):

* ``remaining`` — units the gate may still admit;
* ``users``     — units admitted or held per buyer (the per-user limit);
* ``queued``    — tickets admitted and not yet processed (the queue's bound);
* ``seq``       — the arrival order, which the queue follows.

An attempt is admitted (units taken, buyer counted, a place in line given) or refused at once
— sold out, over the buyer's limit, queue full — without touching the database. Its
idempotency key is remembered with the outcome (a "queue full" excepted: that one says "try
again"), so a retry under the same key gets the same answer. The database
reservation made when the ticket is processed stays the truth: the gate can only refuse too
early (a lost sale), never admit more than the database will reserve. If the counters are
missing (Redis restarted or flushed mid-sale) they are rebuilt from the database — stock, held
orders and queued tickets — before admitting anyone again. A Redis outage sends checkouts for
the SKU down the plain database path (slower, still no oversell).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection

from apps.flashsales.soldout import channel, sold_out_clear
from shop.cache import CACHE_BACKEND_ERRORS, cache_available
from shop.locks import OwnedLock, cache_is_redis
from shop.ratelimit import GCRA_LUA_FUNCTION, Check, gcra_script_inputs

logger = logging.getLogger(__name__)

# KEYS: remaining, users, queued, seq, idempotency marker, stats, admitted attempts, then the
#       rate limits' keys
# ARGV: user id, quantity, per-user limit (0 = none), queue bound, ttl, "user:key" of the
#       attempt, the most admitted attempts a sold-out answer lists, then gcra_all's
#       arguments for the limits' keys (shop.ratelimit.gcra_script_inputs)
# The rate limits (the request's layers and the SKU's hot_sku) are checked first, all or
# nothing, as the middleware would: one round trip for the whole admission.
# The stats hash counts outcomes in total and per minute of Redis's clock ("admitted@29131"),
# for the operators' dashboard and the metrics. The admitted set holds "user:key" of every
# attempt admitted (and not given back): a sold-out answer with nothing left lists them, so a
# process that then refuses the SKU by itself (apps.flashsales.soldout) still sends their
# retries here for their replay.
_ADMIT = (
    GCRA_LUA_FUNCTION
    + """
if #KEYS > 7 then
  local limit_keys, params = {}, {}
  for i = 8, #KEYS do limit_keys[#limit_keys + 1] = KEYS[i] end
  for i = 8, #ARGV - 1 do params[#params + 1] = ARGV[i] end
  local refused = gcra_all(limit_keys, params, tonumber(ARGV[#ARGV]))
  if refused then
    return {'rate_limited', string.format('%d', refused[1]), tostring(refused[2])}
  end
end
local function count(outcome)
  local minute = math.floor(tonumber(redis.call('TIME')[1]) / 60)
  redis.call('HINCRBY', KEYS[6], outcome, 1)
  redis.call('HINCRBY', KEYS[6], outcome .. '@' .. minute, 1)
  redis.call('EXPIRE', KEYS[6], ARGV[5])
end
-- A refusal is remembered under the attempt's key too: the same key, the same answer.
local function refuse(outcome, value)
  count(outcome)
  redis.call('SET', KEYS[5], outcome, 'EX', ARGV[5])
  return {outcome, value}
end
local replay = redis.call('GET', KEYS[5])
if replay then
  if tonumber(replay) then return {'replay', replay} end
  count(replay)
  return {replay, ''}
end
local remaining = redis.call('GET', KEYS[1])
if not remaining then return {'rebuild', ''} end
local qty = tonumber(ARGV[2])
if tonumber(remaining) < qty then
  local answer = refuse('sold_out', remaining)
  if tonumber(remaining) == 0 and redis.call('SCARD', KEYS[7]) <= tonumber(ARGV[7]) then
    answer[3] = redis.call('SMEMBERS', KEYS[7])
  end
  return answer
end
local limit = tonumber(ARGV[3])
local had = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if limit > 0 and had + qty > limit then return refuse('limit', tostring(had)) end
local queued = tonumber(redis.call('GET', KEYS[3]) or '0')
if queued >= tonumber(ARGV[4]) then count('busy'); return {'busy', tostring(queued)} end
count('admitted')
redis.call('DECRBY', KEYS[1], qty)
redis.call('HINCRBY', KEYS[2], ARGV[1], qty)
redis.call('INCR', KEYS[3])
local seq = redis.call('INCR', KEYS[4])
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[5], seq, 'EX', ttl)
redis.call('SADD', KEYS[7], ARGV[6])
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
redis.call('EXPIRE', KEYS[7], ttl)
return {'admitted', tostring(seq)}
"""
)

# KEYS: remaining, users, queued, admitted attempts[, idempotency marker to forget]
# ARGV: user id, quantity to give back, 1 if still queued, the sold-out channel, the SKU id,
#       "user:key" of the attempt to forget
# Units given back are announced on the channel: processes that flagged the SKU sold out
# (apps.flashsales.soldout) drop the flag.
_GIVE_BACK = """
if KEYS[5] then
  redis.call('DEL', KEYS[5])
  redis.call('SREM', KEYS[4], ARGV[6])
end
if not redis.call('GET', KEYS[1]) then return 0 end
local qty = tonumber(ARGV[2])
if qty > 0 then
  redis.call('INCRBY', KEYS[1], qty)
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  local left = redis.call('HINCRBY', KEYS[2], ARGV[1], -qty)
  if left <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
end
if ARGV[3] == '1' then
  local queued = redis.call('DECR', KEYS[3])
  if queued < 0 then redis.call('SET', KEYS[3], 0) end
end
return 1
"""


class GateUnavailable(Exception):
    """Redis cannot be used: take the plain database path."""


@dataclass(frozen=True)
class Admission:
    outcome: str  # admitted | replay | sold_out | limit | busy
    seq: int = 0
    # For a fresh sold_out answer: the units the gate still had (fewer than asked for), and
    # with none left (when not too many) the attempts admitted so far, as "user:key".
    remaining: int | None = None
    admitted: frozenset[str] | None = None
    # For a rate_limited answer: the refusing limit's layer and when to try again.
    layer: str = ""
    retry_after: float = 0.0


def _keys(sku_id: int) -> list[str]:
    return [
        cache.make_key(f"gate:{sku_id}:{part}") for part in ("remaining", "users", "queued", "seq")
    ]


def _stats_key(sku_id: int) -> str:
    return cache.make_key(f"gate:{sku_id}:stats")


def _admitted_key(sku_id: int) -> str:
    return cache.make_key(f"gate:{sku_id}:admitted")


def attempt_id(user_id: int, idempotency_key: str) -> str:
    """How an attempt is named in the gate's admitted set."""
    return f"{user_id}:{idempotency_key}"


# A sold-out answer lists the attempts admitted only up to this many (a sale of more units is
# not refused in-process: the list would cost more than it saves).
ADMITTED_LIST_MAX = 20_000


def _client():
    if not cache_is_redis() or not cache_available():
        raise GateUnavailable("no shared Redis")
    return get_redis_connection("default")


def _marker(sku_id: int, user_id: int, idempotency_key: str) -> str:
    return cache.make_key(f"gate:idem:{sku_id}:{user_id}:{idempotency_key}")


def gate_admit(
    *,
    sku_id: int,
    user_id: int,
    quantity: int,
    per_user_limit: int | None,
    idempotency_key: str,
    truth: Callable[[], dict[str, Any] | None],
    limits: Sequence[Check] = (),
) -> Admission:
    """Try to admit one checkout attempt. ``truth()`` gives the counters as the database sees
    them, for a rebuild. While another process rebuilds them the answer is ``busy`` (try again
    shortly), never a pass to the database. ``limits``: rate limits checked first in the same
    call (answer ``rate_limited`` with the refusing one's layer). Raises GateUnavailable when
    Redis cannot be used or the SKU is no longer on sale."""
    client = _client()
    keys = [*_keys(sku_id), _marker(sku_id, user_id, idempotency_key), _stats_key(sku_id),
            _admitted_key(sku_id)]  # fmt: skip
    args = [user_id, quantity, per_user_limit or 0, settings.CHECKOUT_QUEUE_BOUND,
            settings.FLASH_SALE_COUNTER_TTL, attempt_id(user_id, idempotency_key),
            ADMITTED_LIST_MAX]  # fmt: skip
    limit_keys, limit_args = gcra_script_inputs(limits) if limits else ([], [])
    try:
        script = client.register_script(_ADMIT)
        outcome, value, *listed = script(keys=keys + limit_keys, args=args + limit_args)
        if outcome == b"rebuild":
            if not gate_rebuild(sku_id=sku_id, truth=truth):
                return Admission("busy")
            # (the limits were counted by the first call)
            outcome, value, *listed = script(keys=keys, args=args)
    except CACHE_BACKEND_ERRORS as exc:
        raise GateUnavailable(str(exc)) from exc
    outcome = outcome.decode()
    if outcome == "rebuild":
        raise GateUnavailable("the SKU is no longer on sale")
    if outcome == "rate_limited":
        layer = limits[int(listed[0]) - 1].layer
        return Admission(outcome, layer=layer, retry_after=int(value) / 1_000_000)
    if outcome == "sold_out" and value:
        admitted = frozenset(a.decode() for a in listed[0]) if listed else None
        return Admission(outcome, remaining=int(value), admitted=admitted)
    return Admission(outcome, int(value) if outcome in ("admitted", "replay") else 0)


def gate_give_back(
    *,
    sku_id: int,
    user_id: int,
    quantity: int,
    was_queued: bool,
    idempotency_key: str | None = None,
) -> None:
    """Return units to the gate (an admitted attempt that will not become an order for a
    reason other than the stock) and/or leave the queue. With ``idempotency_key`` the attempt
    is forgotten too (its ticket was never written), so a retry with that key is admitted
    afresh rather than replayed. Best effort: a failure only makes the gate stricter until the
    repair job or a rebuild corrects it."""
    keys = [*_keys(sku_id)[:3], _admitted_key(sku_id)]
    if idempotency_key is not None:
        keys.append(_marker(sku_id, user_id, idempotency_key))
    args = [user_id, quantity, 1 if was_queued else 0, channel(), sku_id,
            attempt_id(user_id, idempotency_key or "")]  # fmt: skip
    try:
        script = _client().register_script(_GIVE_BACK)
        script(keys=keys, args=args)
        if quantity > 0:
            sold_out_clear(sku_id)  # this process at once; the others through the channel
    except (GateUnavailable, *CACHE_BACKEND_ERRORS) as exc:
        logger.warning("gate of SKU %s not given back %s units: %s", sku_id, quantity, exc)


@dataclass(frozen=True)
class GateState:
    remaining: int | None
    queued: int
    seq: int
    users: dict[int, int]


def gate_state(*, sku_id: int) -> GateState | None:
    """The counters as Redis holds them (None without Redis)."""
    try:
        client = _client()
        remaining_key, users_key, queued_key, seq_key = _keys(sku_id)
        remaining, queued, seq = client.mget([remaining_key, queued_key, seq_key])
        users = client.hgetall(users_key)
    except (GateUnavailable, *CACHE_BACKEND_ERRORS):
        return None
    return GateState(
        int(remaining) if remaining is not None else None,
        int(queued or 0),
        int(seq or 0),
        {int(k): int(v) for k, v in users.items()},
    )


GATE_OUTCOMES = ("admitted", "sold_out", "limit", "busy")


@dataclass(frozen=True)
class GateStats:
    totals: dict[str, int]  # outcome → attempts since the sale started
    last_minute: dict[str, int]  # outcome → attempts in the last full minute (Redis clock)
    this_minute: dict[str, int]  # … and so far in the current one


def gate_stats(*, sku_id: int) -> GateStats | None:
    """How the gate has answered (None without Redis)."""
    try:
        client = _client()
        minute = int(client.time()[0]) // 60
        names = [
            *GATE_OUTCOMES,
            *(f"{o}@{minute - 1}" for o in GATE_OUTCOMES),
            *(f"{o}@{minute}" for o in GATE_OUTCOMES),
        ]
        values = [int(v or 0) for v in client.hmget(_stats_key(sku_id), names)]
    except (GateUnavailable, *CACHE_BACKEND_ERRORS):
        return None
    n = len(GATE_OUTCOMES)
    return GateStats(
        dict(zip(GATE_OUTCOMES, values[:n], strict=True)),
        dict(zip(GATE_OUTCOMES, values[n : 2 * n], strict=True)),
        dict(zip(GATE_OUTCOMES, values[2 * n :], strict=True)),
    )


def gate_load(*, sku_id: int, remaining: int, users: dict[int, int], queued: int, seq: int) -> None:
    """Replace the counters (a sale starting, a rebuild, a repair)."""
    client = _client()
    remaining_key, users_key, queued_key, seq_key = _keys(sku_id)
    ttl = settings.FLASH_SALE_COUNTER_TTL
    pipe = client.pipeline(transaction=True)
    pipe.delete(users_key)
    held = {str(user): units for user, units in users.items() if units > 0}
    if held:
        pipe.hset(users_key, mapping=held)
    pipe.set(queued_key, queued, ex=ttl)
    pipe.set(seq_key, max(seq, 0), ex=ttl)
    pipe.expire(users_key, ttl)
    pipe.set(remaining_key, max(remaining, 0), ex=ttl)  # last: admissions wait for it
    pipe.publish(channel(), sku_id)  # processes that flagged it sold out look again
    pipe.execute()
    sold_out_clear(sku_id)  # this one too, whether or not its listener runs


def gate_rebuild(*, sku_id: int, truth: Callable[[], dict[str, Any] | None]) -> bool:
    """Rebuild the counters from ``truth()`` (the database's view) under a lock: one process
    does it; the others find the counters back when they retry. False while another process
    holds the lock (nobody may be admitted until it is done)."""
    lock = OwnedLock(f"gate-rebuild:{sku_id}", ttl=30)
    if not lock.acquire():
        return False
    try:
        if _client().exists(_keys(sku_id)[0]):
            return True  # another process rebuilt it first
        counters = truth()
        if counters is None:
            return True  # not on sale: nothing to admit
        gate_load(sku_id=sku_id, **counters)
        logger.warning("gate of SKU %s rebuilt from the database: %s", sku_id, counters)
        return True
    finally:
        lock.release()


def gate_idle_since_last_check(*, sku_id: int, seq: int) -> bool:
    """Whether the arrival seq is the one the previous check saw (no admission in between);
    remembers this one for the next check."""
    try:
        key = cache.make_key(f"gate:{sku_id}:checked-seq")
        previous = _client().set(key, seq, ex=settings.FLASH_SALE_COUNTER_TTL, get=True)
    except (GateUnavailable, *CACHE_BACKEND_ERRORS):
        return False
    return previous is not None and int(previous) == seq


def gate_clear(*, sku_id: int) -> None:
    try:
        client = _client()
        client.delete(*_keys(sku_id), _stats_key(sku_id), _admitted_key(sku_id))
        client.publish(channel(), sku_id)
        sold_out_clear(sku_id)
    except (GateUnavailable, *CACHE_BACKEND_ERRORS):
        pass
