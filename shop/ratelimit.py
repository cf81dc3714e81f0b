"""Rate limits shared by every process through Redis: the generic cell rate algorithm (GCRA).

The algorithm
-------------
A :class:`Limit` of ``rate`` requests per ``period`` seconds with a ``burst`` is enforced with
GCRA, the "leaky bucket as a meter" of ATM networks:

* the **emission interval** ``T = period / rate`` is the steady spacing between requests;
* the **tolerance** ``τ = T × burst`` is how far ahead of that schedule requests may run;
* the only state per key is the **theoretical arrival time** ``TAT``: when the next request
  would be due if every admitted request so far had arrived exactly on schedule.

A request of ``cost`` ``n`` arriving at ``now`` gives ``new_tat = max(TAT, now) + n × T``. It is
admitted when ``new_tat - τ <= now`` (the schedule is not more than ``τ`` ahead of the clock),
and then ``TAT := new_tat``; a refused request changes nothing and may retry in
``retry_after = new_tat - τ - now`` seconds. So from an idle key ``burst`` requests go through
back to back, after which one more is admitted every ``T``: at most ``rate`` per ``period`` in
steady state and at most ``burst + elapsed / T`` in any span of ``elapsed`` seconds. Unlike a
fixed window there is no doubled burst at a window boundary: with 10 per 60 s and a burst of 10,
ten requests at 59.9 s leave ``TAT`` at 119.9 s, so a request at 60.1 s is refused (a fixed
window would reset at 60 s and admit ten more). ``remaining`` is how many requests of cost 1
would still be admitted at once: ``⌊(τ - (TAT - now)) / T⌋``.

All arithmetic is in whole microseconds (``T`` is rounded to the microsecond, at least 1), so
the Lua script and the per-process counterpart agree exactly.

Shared state
------------
With the Redis cache (services profile) the ``TAT`` of a key lives in one Redis string under
``cache.make_key("ratelimit:" + key)``. Each check is one atomic Lua script that reads the clock
with ``TIME`` on the Redis server (never a process's clock), so any number of processes share
one exact limit. Several limits of one request (the system-wide and the per-route layer) go in
one script call, all or nothing (:func:`gcra_check_all`): a request one limit refuses is
counted in none. Every write sets a TTL of the time until ``TAT`` is reached (rounded up to the
millisecond, at least one second): after that the stored state is equivalent to no state, so
idle keys vanish by themselves and every limiter key carries a TTL.

Without Redis
-------------
* **Local-memory cache** (the embedded profile; no Redis is configured): every check is decided
  by a per-process GCRA with the same semantics (thread-safe, monotonic clock). ``fail`` does not
  matter: there is no Redis that could be unreachable, the per-process limiter *is* the limiter.
* **Redis unreachable** (configured but failing, or marked down by :mod:`shop.cache`'s health
  tracking for ``CACHE_DOWN_BACKOFF`` seconds): ``fail="open"`` decides with the per-process
  GCRA (so with ``N`` processes up to ``N`` times the limit gets through while Redis is down);
  ``fail="closed"`` refuses with ``retry_after=FAIL_CLOSED_RETRY_AFTER`` (the caller answers
  503). Redis errors are never raised; a warning is logged at most once a minute per process.

Decisions made by the per-process limiter, or refused because Redis was unreachable, carry
``degraded=True``. Refusals are counted in ``shop_rate_limited_total{layer}`` when the caller
names its layer.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from django.core.cache import cache
from django_redis import get_redis_connection
from prometheus_client import Counter

from shop.cache import FallbackWarning, cache_call, cache_shared
from shop.locks import cache_is_redis

logger = logging.getLogger(__name__)

FailMode = Literal["open", "closed"]

#: ``retry_after`` of a fail-closed refusal while Redis is unreachable (seconds).
FAIL_CLOSED_RETRY_AFTER = 5.0
#: TTLs of limiter keys are never shorter than this (milliseconds).
MIN_TTL_MS = 1000

RATE_LIMITED = Counter(
    "shop_rate_limited_total",
    "Requests refused by a rate limit (including fail-closed refusals while Redis is down)",
    ["layer"],
)

_MICROS = 1_000_000


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per ``period`` seconds, up to ``burst`` of them back to back.

    ``burst=1`` means requests must keep the steady spacing ``period / rate``; ``burst=k`` lets
    ``k`` requests arrive at once after an idle spell. Raises ValueError for a rate or burst
    below 1 or a period that is not a positive finite number.
    """

    rate: int
    period: float
    burst: int = 1

    def __post_init__(self) -> None:
        if self.rate < 1:
            raise ValueError("a rate limit needs a rate of at least 1")
        if not (0 < self.period < math.inf):
            raise ValueError("a rate limit needs a positive, finite period")
        if self.burst < 1:
            raise ValueError("a rate limit needs a burst of at least 1")

    @property
    def emission_interval(self) -> float:
        """``T``: seconds between requests at the steady rate."""
        return self._interval_us() / _MICROS

    @property
    def tolerance(self) -> float:
        """``τ = T × burst``: how far (seconds) requests may run ahead of the steady schedule."""
        return self._interval_us() * self.burst / _MICROS

    def _interval_us(self) -> int:
        return max(1, round(self.period * _MICROS / self.rate))


@dataclass(frozen=True)
class Decision:
    """The answer to one check.

    ``allowed``: go ahead. ``retry_after``: seconds until a request of the same cost would be
    admitted (0 when allowed; > 0 when refused). ``remaining``: how many requests of cost 1
    would still be admitted right now. ``degraded``: decided without the shared Redis state
    (per-process limiter, or a fail-closed refusal because Redis is unreachable).
    """

    allowed: bool
    retry_after: float
    remaining: int
    degraded: bool


# --- GCRA, on Redis --------------------------------------------------------------------------

# KEYS = one limiter key per check; each value is a TAT in microseconds on the clock below.
# ARGV = now_us ('' = the Redis server's TIME; an explicit clock is for tests and simulations
# only), min_ttl_ms, then per key: interval_us (T), tolerance_us (τ), cost. All integers.
# All or nothing: the request is admitted only if every key admits it, and only then are the
# keys written, so a request one layer refuses uses up no other layer's budget.
# Returns {allowed (0/1), retry_us, remaining, index}: for a refusal, the first refusing key's
# retry and remaining and its 1-based index; when admitted, the fewest remaining of any key and
# index 0. _gcra_step below is the same computation in Python; keep the two in step.
_GCRA_SCRIPT = """
-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; later: a no-op.
if redis.replicate_commands then redis.replicate_commands() end
local now
if ARGV[1] ~= '' then
    now = tonumber(ARGV[1])
else
    local clock = redis.call('TIME')
    now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end

local new_tats = {}
local fewest = nil
for i, key in ipairs(KEYS) do
    local interval = tonumber(ARGV[3 * i])
    local tolerance = tonumber(ARGV[3 * i + 1])
    local cost = tonumber(ARGV[3 * i + 2])
    -- GET answers false for a missing key, and tonumber(false) is nil: no state = idle.
    local tat = tonumber(redis.call('GET', key))
    if tat == nil or tat < now then tat = now end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - tolerance
    if now < allow_at then
        local remaining = math.floor((tolerance - (tat - now)) / interval)
        return {0, allow_at - now, math.max(remaining, 0), i}
    end
    new_tats[i] = new_tat
    local remaining = math.max(math.floor((tolerance - (new_tat - now)) / interval), 0)
    if fewest == nil or remaining < fewest then fewest = remaining end
end

for i, key in ipairs(KEYS) do
    -- Numbers this large must not go through tostring (%.14g); format them as integers.
    local ttl_ms = math.max(tonumber(ARGV[2]), math.ceil((new_tats[i] - now) / 1000))
    redis.call('SET', key, string.format('%d', new_tats[i]), 'PX', string.format('%d', ttl_ms))
end
return {1, 0, fewest, 0}
"""


# The same GCRA step as a Lua function, for a script that checks limits and does its own work
# in one call (the flash-sale gate): gcra_all(keys, params, min_ttl_ms) with params the flat
# (interval_us, tolerance_us, cost) of each key; nil when every key admits (each then
# written), else {retry_us, 1-based index of the refusing key}. Keep it in step with
# _GCRA_SCRIPT.
GCRA_LUA_FUNCTION = """
local function gcra_all(keys, params, min_ttl_ms)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  local new_tats = {}
  for i, key in ipairs(keys) do
    local interval = tonumber(params[3 * i - 2])
    local tolerance = tonumber(params[3 * i - 1])
    local cost = tonumber(params[3 * i])
    local tat = tonumber(redis.call('GET', key))
    if tat == nil or tat < now then tat = now end
    local new_tat = tat + cost * interval
    local allow_at = new_tat - tolerance
    if now < allow_at then return {allow_at - now, i} end
    new_tats[i] = new_tat
  end
  for i, key in ipairs(keys) do
    local ttl_ms = math.max(min_ttl_ms, math.ceil((new_tats[i] - now) / 1000))
    redis.call('SET', key, string.format('%d', new_tats[i]), 'PX', string.format('%d', ttl_ms))
  end
  return nil
end
"""


def gcra_script_inputs(checks: Sequence[Check]) -> tuple[list[str], list[int]]:
    """The Redis keys of ``checks`` and the arguments ``gcra_all`` takes for them, then
    MIN_TTL_MS last: (keys, [interval_us, tolerance_us, cost, ..., min_ttl_ms])."""
    keys = [_redis_key(check.key) for check in checks]
    args = [n for check in checks for n in _params(check.limit, check.cost)]
    return keys, [*args, MIN_TTL_MS]


class _Params(NamedTuple):
    interval_us: int
    tolerance_us: int
    cost: int


class _Step(NamedTuple):
    allowed: bool
    retry_us: int  # 0 when allowed
    remaining: int
    tat_us: int  # the stored TAT after the step (unchanged when refused)


def _params(limit: Limit, cost: int) -> _Params:
    if cost < 1:
        raise ValueError("cost must be at least 1")
    if cost > limit.burst:
        raise ValueError(
            f"cost {cost} exceeds the burst {limit.burst}: such a request can never be admitted"
        )
    interval = limit._interval_us()
    return _Params(interval_us=interval, tolerance_us=interval * limit.burst, cost=cost)


def _redis_delete(full_key: str) -> None:
    get_redis_connection("default").delete(full_key)


def _redis_check(
    full_keys: list[str], params: list[_Params], now_us: int | None
) -> tuple[_Step, int]:
    """One script call for every key; (the step, the 0-based index of the refusing key or -1)."""
    client = get_redis_connection("default")
    script = client.register_script(_GCRA_SCRIPT)
    args: list[int | str] = ["" if now_us is None else now_us, MIN_TTL_MS]
    for p in params:
        args.extend(p)
    allowed, retry_us, remaining, index = script(keys=full_keys, args=args)
    return _Step(bool(allowed), int(retry_us), int(remaining), tat_us=0), int(index) - 1


# --- The same GCRA, per process ----------------------------------------------------------------


def _gcra_step(stored_tat: int | None, now: int, params: _Params) -> _Step:
    """One GCRA decision in microseconds: the line-by-line counterpart of ``_GCRA_SCRIPT``."""
    interval, tolerance, cost = params
    tat = now if stored_tat is None or stored_tat < now else stored_tat
    new_tat = tat + cost * interval
    allow_at = new_tat - tolerance
    if now < allow_at:
        remaining = (tolerance - (tat - now)) // interval
        return _Step(False, allow_at - now, max(remaining, 0), stored_tat or 0)
    return _Step(True, 0, max((tolerance - (new_tat - now)) // interval, 0), new_tat)


class PerProcessLimiter:
    """GCRA state of this process only: the limiter without (a reachable) Redis.

    Thread-safe (one lock), on the monotonic clock (microseconds). Keys whose TAT has passed are
    dropped in amortised sweeps, so memory follows the number of recently limited keys.
    """

    _MIN_SWEEP = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}
        self._sweep_at = self._MIN_SWEEP

    def check(
        self, keys: list[str], params: list[_Params], now_us: int | None = None
    ) -> tuple[_Step, int]:
        """All or nothing over ``keys``, as the script: (the step, the refusing key's index or
        -1 when admitted; then ``remaining`` is the fewest of any key)."""
        with self._lock:
            now = time.monotonic_ns() // 1000 if now_us is None else now_us
            steps = []
            for index, (key, p) in enumerate(zip(keys, params, strict=True)):
                step = _gcra_step(self._tats.get(key), now, p)
                if not step.allowed:
                    return step, index
                steps.append(step)
            for key, step in zip(keys, steps, strict=True):
                self._tats[key] = step.tat_us
            if len(self._tats) >= self._sweep_at:
                self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
                self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._tats))
            return min(steps, key=lambda step: step.remaining), -1

    def reset(self, key: str | None = None) -> None:
        """Forget ``key``'s state, or every key's when None."""
        with self._lock:
            if key is None:
                self._tats.clear()
                self._sweep_at = self._MIN_SWEEP
            else:
                self._tats.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tats)


per_process_limiter = PerProcessLimiter()


_unreachable_warning = FallbackWarning(
    logger,
    "rate limit",
    "fail-open limits are enforced per process (not shared with other processes), fail-closed "
    "limits refuse",
)


def ratelimit_local_reset() -> None:
    """Forget every per-process limiter state and the warning rate limit (tests)."""
    per_process_limiter.reset()
    _unreachable_warning.reset()


# --- The public API ----------------------------------------------------------------------------


def _redis_key(key: str) -> str:
    return cache.make_key("ratelimit:" + key)


class Check(NamedTuple):
    """One limit a request must pass: its key, its limit, its layer (for the refusal count)."""

    key: str
    limit: Limit
    layer: str = ""
    cost: int = 1


def _decide(checks: Sequence[Check], fail: FailMode, now: float | None) -> tuple[Decision, str]:
    if not checks or not all(check.key for check in checks):
        raise ValueError("a rate limit needs a key")
    if fail not in ("open", "closed"):
        raise ValueError('fail must be "open" or "closed"')
    keys = [check.key for check in checks]
    params = [_params(check.limit, check.cost) for check in checks]
    now_us = None if now is None else round(now * _MICROS)
    result: tuple[_Step, int] | None = None
    if cache_is_redis():
        result = cache_shared(
            "ratelimit", _unreachable_warning, ", ".join(keys),
            _redis_check, [_redis_key(key) for key in keys], params, now_us,
        )  # fmt: skip
        if result is None and fail == "closed":
            decision = Decision(
                allowed=False, retry_after=FAIL_CLOSED_RETRY_AFTER, remaining=0, degraded=True
            )
            _count(decision, checks[0].layer)
            return decision, checks[0].layer
    degraded = result is None
    if result is None:
        result = per_process_limiter.check(keys, params, now_us)
    step, refused = result
    decision = Decision(
        allowed=step.allowed,
        retry_after=step.retry_us / _MICROS,
        remaining=step.remaining,
        degraded=degraded,
    )
    layer = checks[refused].layer if refused >= 0 else ""
    _count(decision, layer)
    return decision, layer


def _count(decision: Decision, layer: str) -> None:
    if layer and not decision.allowed:
        RATE_LIMITED.labels(layer).inc()


def gcra_check(
    key: str, limit: Limit, *, cost: int = 1, layer: str = "", fail: FailMode = "open"
) -> Decision:
    """Check and, if admitted, consume ``cost`` requests of ``limit`` for ``key`` now.

    Shared through Redis when the cache is Redis (one atomic script on server time); see the
    module docstring for the algorithm and for ``fail`` ("open": per-process limiter while
    Redis is unreachable; "closed": refuse while it is unreachable; with the local-memory
    cache both use the per-process limiter). A refusal is counted under ``layer`` when given.
    Never raises because of Redis. Raises ValueError for an empty key, an unknown ``fail``, a
    cost below 1, or a cost above ``limit.burst`` (it could never be admitted).
    """
    return _decide([Check(key, limit, layer, cost)], fail, None)[0]


def gcra_check_all(checks: Sequence[Check], *, fail: FailMode = "open") -> tuple[Decision, str]:
    """:func:`gcra_check` for several limits at once (e.g. the system-wide and the per-route
    layer of one request): one atomic script, admitted only if every limit admits it, and only
    then consumed in each. Returns the decision and the refusing check's layer ("" when
    admitted; the first check's when refused because Redis is unreachable and ``fail`` is
    "closed"). When admitted, ``remaining`` is the fewest any limit has left."""
    return _decide(checks, fail, None)


def gcra_check_at(
    key: str,
    limit: Limit,
    now: float,
    *,
    cost: int = 1,
    layer: str = "",
    fail: FailMode = "open",
) -> Decision:
    """:func:`gcra_check` on an explicit clock: ``now`` in seconds replaces Redis ``TIME`` (or
    the monotonic clock of the per-process limiter).

    For tests and simulations only: a key must be driven by explicit times alone, never mixed
    with :func:`gcra_check` (the two clocks have nothing in common), and production code must
    not pass a process's clock, which is what the Redis clock is there to avoid.
    """
    return _decide([Check(key, limit, layer, cost)], fail, now)[0]


def gcra_reset(key: str) -> None:
    """Delete ``key``'s limiter state: in Redis (when the cache is Redis) and in this process.

    For tests and operators (lift a limit now). Raises CacheUnavailable when Redis is
    configured but unreachable, so an operator knows the shared state was not reset.
    """
    per_process_limiter.reset(key)
    if cache_is_redis():
        cache_call("ratelimit_reset", _redis_delete, _redis_key(key))
