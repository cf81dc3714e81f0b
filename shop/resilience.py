"""Circuit breakers shared by every process through Redis, and a retry policy with full jitter.

Circuit breaker
---------------
A :class:`CircuitBreaker` guards calls to one dependency (a payment provider, a carrier API).

* **Closed**: calls go through. Failures are counted in a *sliding window*:
  ``failure_threshold`` failures within the last ``failure_window`` seconds open the breaker,
  whatever successes came between them (a dependency failing every other call is broken too).
  Successes do not reset the count; failures older than the window simply stop counting, so a
  slow trickle of errors never opens it. This also means a success costs no Redis round trip.
* **Open**: :meth:`CircuitBreaker.acquire` raises :class:`BreakerOpen` at once, carrying
  ``retry_after`` (seconds until the breaker turns half-open), for ``reset_timeout`` seconds.
* **Half-open** (open for longer than ``reset_timeout``): at most ``half_open_probes`` trial
  calls ("probes") are admitted *across all processes*. A probe's success closes the breaker
  and forgets past failures; a probe's failure opens it again for a new ``reset_timeout``.
  A probe slot that is never recorded (its process died) expires after ``probe_timeout``
  (default ``reset_timeout``), so the breaker cannot get stuck half-open.
* **Forced open** by an operator (:meth:`CircuitBreaker.force_open`): open until
  :meth:`CircuitBreaker.force_close`, never half-open in between.

Permits acquired while closed are not probes: their success changes nothing, their failure
counts while the breaker is still closed and is ignored once it has opened (it must not extend
an open period or decide a half-open one). Only a probe's own outcome decides a half-open one.

**Shared state.** With the Redis cache (services profile) all state of a breaker lives in one
Redis hash (``breaker:<name>`` under the cache's key prefix). Every operation is one atomic Lua
script that reads the clock with ``TIME`` on the Redis server, so process clocks never matter
and no two processes can both take the last probe slot. The hash expires ``STATE_TTL`` after
its last write (a forced-open breaker does not expire), and is deleted outright when the
breaker is closed with no failures in its window, so abandoned breakers vanish.

**Without Redis** (the embedded profile's local-memory cache, or Redis unreachable) each
process keeps its own breaker state with the same semantics (thread-safe, monotonic clock).
Redis errors are never raised to callers: the breaker falls back to the per-process state,
logs a warning at most once a minute per process, and (through :mod:`shop.cache`'s health
tracking) skips Redis for ``CACHE_DOWN_BACKOFF`` seconds. The per-process state starts
closed; when Redis answers again the shared state is used again.

Retry
-----
:func:`retry_call` retries a call on retriable exceptions with capped exponential backoff and
full jitter: before retry ``n`` (0-based) it sleeps ``uniform(0, min(max_delay, initial_delay *
multiplier ** n))``. :class:`BreakerOpen` is never retried: the breaker already says when to
come back. Only retry operations that are safe to repeat (idempotency-keyed calls).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

from django.conf import settings
from django.core.cache import cache
from django_redis import get_redis_connection
from prometheus_client import Counter, Gauge

from shop.cache import FallbackWarning, cache_shared
from shop.locks import cache_is_redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

BreakerState = Literal["closed", "open", "half_open"]

#: Seconds an untouched breaker hash lives in Redis (refreshed by every write).
STATE_TTL = 24 * 3600

BREAKER_STATE = Gauge(
    "shop_breaker_state",
    "Circuit breaker state as last seen by this process (0 closed, 1 half-open, 2 open)",
    ["breaker"],
    multiprocess_mode="mostrecent",
)
BREAKER_TRANSITIONS = Counter(
    "shop_breaker_transitions_total",
    "Circuit breaker state changes, counted once by the process that made them",
    ["breaker", "to"],
)
_STATE_CODES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


class BreakerOpen(Exception):
    """The breaker ``name`` rejects calls; try again in ``retry_after`` seconds (> 0)."""

    def __init__(self, name: str, retry_after: float) -> None:
        # Both in args, so the exception survives pickling (Celery results, multiprocessing).
        super().__init__(name, retry_after)
        self.name = name
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"circuit breaker {self.name!r} is open; retry after {self.retry_after:.1f} s"


@dataclass(frozen=True)
class Permit:
    """Leave to make one call, returned by :meth:`CircuitBreaker.acquire`.

    Hand it back to ``record_success`` or ``record_failure``. ``probe`` is True for a half-open
    trial call, which holds one of the breaker's probe slots until recorded or expired.
    """

    breaker: str
    token: str
    probe: bool


# --- The state machine, on Redis ---------------------------------------------------------------

# KEYS[1] = the breaker's hash.
# ARGV = op, threshold, reset_ms, window_ms, max_probes, probe_ms, ttl_ms, token, is_probe.
# op: acquire | success | failure | force_open | force_close | snapshot (read-only).
# Hash fields: state (open | half_open; no hash or no field = closed), opened_at (ms),
# forced ("1"), failures (space-separated ms timestamps), probe:<token> = slot expiry (ms).
# Returns {admitted, probe, state, retry_ms, failures, opened_at_ms, probes, forced,
#          transitions (space-separated states entered by this call)}.
# _LocalBreakers.run below is the same machine in Python; keep the two in step.
_BREAKER_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local threshold = tonumber(ARGV[2])
local reset_ms = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local max_probes = tonumber(ARGV[5])
local probe_ms = tonumber(ARGV[6])
local ttl_ms = tonumber(ARGV[7])
local token = ARGV[8]
local is_probe = ARGV[9] == '1'

-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; later: a no-op.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local state, opened_at, forced = 'closed', 0, false
local failures, probes, probe_count = {}, {}, 0
local dirty = false
local raw = redis.call('HGETALL', key)
for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    if name == 'state' then
        state = value
    elseif name == 'opened_at' then
        opened_at = tonumber(value)
    elseif name == 'forced' then
        forced = value == '1'
    elseif name == 'failures' then
        for stamp in string.gmatch(value, '%d+') do
            stamp = tonumber(stamp)
            if stamp > now - window_ms then
                table.insert(failures, stamp)
            else
                dirty = true
            end
        end
    elseif string.sub(name, 1, 6) == 'probe:' then
        local expiry = tonumber(value)
        if expiry > now then
            probes[string.sub(name, 7)] = expiry
            probe_count = probe_count + 1
        else
            dirty = true
        end
    end
end

local transitions = {}
if forced then
    state = 'open'
elseif state == 'open' and now >= opened_at + reset_ms then
    state = 'half_open'
    dirty = true
    table.insert(transitions, 'half_open')
end

local function to_open()
    state, opened_at = 'open', now
    failures, probes, probe_count = {}, {}, 0
    dirty = true
    table.insert(transitions, 'open')
end

local function to_closed()
    state, opened_at, forced = 'closed', 0, false
    failures, probes, probe_count = {}, {}, 0
    dirty = true
    table.insert(transitions, 'closed')
end

local admitted, granted, retry_ms = 0, 0, 0
if op == 'acquire' then
    if forced then
        retry_ms = reset_ms
    elseif state == 'closed' then
        admitted = 1
    elseif state == 'open' then
        retry_ms = opened_at + reset_ms - now
    elseif probe_count < max_probes then
        probes[token] = now + probe_ms
        probe_count = probe_count + 1
        admitted, granted, dirty = 1, 1, true
    else
        local earliest = nil
        for _, expiry in pairs(probes) do
            if earliest == nil or expiry < earliest then earliest = expiry end
        end
        retry_ms = earliest - now
    end
elseif op == 'success' then
    if not forced and state == 'half_open' and is_probe and probes[token] then
        to_closed()
    end
elseif op == 'failure' then
    if forced then
        -- an operator decided; outcomes change nothing
    elseif state == 'closed' then
        table.insert(failures, now)
        while #failures > threshold do table.remove(failures, 1) end
        dirty = true
        if #failures >= threshold then to_open() end
    elseif state == 'half_open' and is_probe and probes[token] then
        to_open()
    end
elseif op == 'force_open' then
    if state ~= 'open' then table.insert(transitions, 'open') end
    state, opened_at, forced = 'open', now, true
    failures, probes, probe_count = {}, {}, 0
    dirty = true
elseif op == 'force_close' then
    if state ~= 'closed' then
        to_closed()
    else
        forced, failures, probes, probe_count, dirty = false, {}, {}, 0, true
    end
end

if op == 'snapshot' then
    transitions = {}
elseif dirty then
    redis.call('DEL', key)
    if state ~= 'closed' or #failures > 0 then
        local fields = {'state', state}
        if state ~= 'closed' then
            table.insert(fields, 'opened_at')
            table.insert(fields, string.format('%d', opened_at))
        end
        if forced then
            table.insert(fields, 'forced')
            table.insert(fields, '1')
        end
        if #failures > 0 then
            local stamps = {}
            for i, stamp in ipairs(failures) do stamps[i] = string.format('%d', stamp) end
            table.insert(fields, 'failures')
            table.insert(fields, table.concat(stamps, ' '))
        end
        if state == 'half_open' then
            for probe, expiry in pairs(probes) do
                table.insert(fields, 'probe:' .. probe)
                table.insert(fields, string.format('%d', expiry))
            end
        end
        redis.call('HSET', key, unpack(fields))
        if not forced then redis.call('PEXPIRE', key, ttl_ms) end
    end
end

if state ~= 'half_open' then probe_count = 0 end
return {admitted, granted, state, retry_ms, #failures, opened_at, probe_count,
        forced and 1 or 0, table.concat(transitions, ' ')}
"""


class _Config(NamedTuple):
    threshold: int
    reset_ms: int
    window_ms: int
    max_probes: int
    probe_ms: int
    ttl_ms: int


class _Outcome(NamedTuple):
    admitted: bool
    probe: bool
    state: BreakerState
    retry_after: float  # seconds; meaningful when not admitted
    failures: int
    opened_at: float | None  # wall-clock seconds since the epoch
    probes: int
    forced: bool
    transitions: tuple[str, ...]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redis_run(key: str, op: str, config: _Config, token: str, probe: bool) -> _Outcome:
    client = get_redis_connection("default")
    script = client.register_script(_BREAKER_SCRIPT)
    reply = script(
        keys=[key],
        args=[op, *config, token, "1" if probe else "0"],
    )
    admitted, granted, state, retry_ms, failures, opened_at, probes, forced, moves = reply
    transitions = _text(moves)
    return _Outcome(
        admitted=bool(admitted),
        probe=bool(granted),
        state=_text(state),  # type: ignore[arg-type]
        retry_after=max(int(retry_ms), 1) / 1000,
        failures=int(failures),
        opened_at=int(opened_at) / 1000 if int(opened_at) else None,
        probes=int(probes),
        forced=bool(forced),
        transitions=tuple(transitions.split()) if transitions else (),
    )


# --- The same state machine, per process --------------------------------------------------------


@dataclass
class _LocalRecord:
    state: BreakerState = "closed"
    opened_at: int = 0  # monotonic ms
    opened_wall: float = 0.0  # the same moment on the wall clock, for snapshots
    forced: bool = False
    failures: list[int] = field(default_factory=list)
    probes: dict[str, int] = field(default_factory=dict)  # token → expiry (monotonic ms)


class _LocalBreakers:
    """Breaker state of this process only: the fallback without (a reachable) Redis.

    A line-by-line counterpart of ``_BREAKER_SCRIPT``, on the monotonic clock, under one lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, _LocalRecord] = {}

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def run(self, key: str, op: str, config: _Config, token: str, probe: bool) -> _Outcome:
        with self._lock:
            now = time.monotonic_ns() // 1_000_000
            stored = self._records.get(key, _LocalRecord())
            record = _LocalRecord(
                state=stored.state,
                opened_at=stored.opened_at,
                opened_wall=stored.opened_wall,
                forced=stored.forced,
                failures=[stamp for stamp in stored.failures if stamp > now - config.window_ms],
                probes={t: expiry for t, expiry in stored.probes.items() if expiry > now},
            )
            transitions: list[str] = []
            if record.forced:
                record.state = "open"
            elif record.state == "open" and now >= record.opened_at + config.reset_ms:
                record.state = "half_open"
                transitions.append("half_open")

            def to_open() -> None:
                record.state, record.opened_at = "open", now
                record.opened_wall = time.time()
                record.failures, record.probes = [], {}
                transitions.append("open")

            def to_closed() -> None:
                record.state, record.opened_at, record.forced = "closed", 0, False
                record.failures, record.probes = [], {}
                transitions.append("closed")

            admitted = granted = False
            retry_ms = 0
            if op == "acquire":
                if record.forced:
                    retry_ms = config.reset_ms
                elif record.state == "closed":
                    admitted = True
                elif record.state == "open":
                    retry_ms = record.opened_at + config.reset_ms - now
                elif len(record.probes) < config.max_probes:
                    record.probes[token] = now + config.probe_ms
                    admitted = granted = True
                else:
                    retry_ms = min(record.probes.values()) - now
            elif op == "success":
                if (
                    not record.forced
                    and record.state == "half_open"
                    and probe
                    and token in record.probes
                ):
                    to_closed()
            elif op == "failure":
                if record.forced:
                    pass
                elif record.state == "closed":
                    record.failures = [*record.failures, now][-config.threshold :]
                    if len(record.failures) >= config.threshold:
                        to_open()
                elif record.state == "half_open" and probe and token in record.probes:
                    to_open()
            elif op == "force_open":
                if record.state != "open":
                    transitions.append("open")
                record.state, record.opened_at, record.forced = "open", now, True
                record.opened_wall = time.time()
                record.failures, record.probes = [], {}
            elif op == "force_close":
                if record.state != "closed":
                    to_closed()
                record.forced, record.failures, record.probes = False, [], {}

            if op == "snapshot":
                transitions = []
            elif record.state == "closed" and not record.failures:
                self._records.pop(key, None)
            else:
                if record.state != "half_open":
                    record.probes = {}
                self._records[key] = record

            probes = len(record.probes) if record.state == "half_open" else 0
            opened_at = record.opened_wall if record.state != "closed" else None
            return _Outcome(
                admitted=admitted,
                probe=granted,
                state=record.state,
                retry_after=max(retry_ms, 1) / 1000,
                failures=len(record.failures),
                opened_at=opened_at,
                probes=probes,
                forced=record.forced,
                transitions=tuple(transitions),
            )


_local = _LocalBreakers()


_fallback_warning = FallbackWarning(
    logger,
    "circuit breaker",
    "using this process's own breaker state (not shared with other processes)",
)


def breakers_local_reset() -> None:
    """Forget every per-process breaker state and the warning rate limit (tests)."""
    _local.reset()
    _fallback_warning.reset()


# --- The breaker ------------------------------------------------------------------------------


def _always(exc: BaseException) -> bool:
    return True


class CircuitBreaker:
    """A circuit breaker named ``name``; instances with the same name share one state.

    Arguments left as None are read from the settings (``BREAKER_FAILURE_THRESHOLD``,
    ``BREAKER_RESET_TIMEOUT``, ``BREAKER_FAILURE_WINDOW``, ``BREAKER_HALF_OPEN_PROBES``) at
    each call, so a module-level breaker follows settings changes. ``probe_timeout`` (default:
    the reset timeout) is how long a half-open probe slot is held when its outcome is never
    recorded. No method raises a Redis error; see the module docstring for the semantics.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int | None = None,
        reset_timeout: float | None = None,
        failure_window: float | None = None,
        half_open_probes: int | None = None,
        probe_timeout: float | None = None,
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a name")
        if failure_threshold is not None and failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if half_open_probes is not None and half_open_probes < 1:
            raise ValueError("half_open_probes must be at least 1")
        for label, value in (
            ("reset_timeout", reset_timeout),
            ("failure_window", failure_window),
            ("probe_timeout", probe_timeout),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{label} must be positive")
        self.name = name
        self._failure_threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._failure_window = failure_window
        self._half_open_probes = half_open_probes
        self._probe_timeout = probe_timeout

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r})"

    # Effective configuration ------------------------------------------------------------------

    @property
    def failure_threshold(self) -> int:
        return self._failure_threshold or settings.BREAKER_FAILURE_THRESHOLD

    @property
    def reset_timeout(self) -> float:
        return self._reset_timeout or settings.BREAKER_RESET_TIMEOUT

    @property
    def failure_window(self) -> float:
        return self._failure_window or settings.BREAKER_FAILURE_WINDOW

    @property
    def half_open_probes(self) -> int:
        return self._half_open_probes or settings.BREAKER_HALF_OPEN_PROBES

    @property
    def probe_timeout(self) -> float:
        return self._probe_timeout or self.reset_timeout

    def _config(self) -> _Config:
        reset, window, probe = self.reset_timeout, self.failure_window, self.probe_timeout
        return _Config(
            threshold=max(1, self.failure_threshold),
            reset_ms=_ms(reset),
            window_ms=_ms(window),
            max_probes=max(1, self.half_open_probes),
            probe_ms=_ms(probe),
            ttl_ms=_ms(max(STATE_TTL, 2 * (reset + window + probe))),
        )

    # Public API -------------------------------------------------------------------------------

    def state(self) -> BreakerState:
        """ "closed", "open" or "half_open" now (open past its reset timeout reads half-open)."""
        return self._run("snapshot").state

    def acquire(self) -> Permit:
        """Leave for one call. Raises :class:`BreakerOpen` when open, or half-open with every
        probe slot taken; in half-open the permit is a probe holding one slot."""
        token = secrets.token_hex(8)
        outcome = self._run("acquire", token=token)
        if not outcome.admitted:
            raise BreakerOpen(self.name, outcome.retry_after)
        return Permit(breaker=self.name, token=token, probe=outcome.probe)

    def record_success(self, permit: Permit) -> None:
        """The permitted call succeeded. A live probe's success closes the breaker and forgets
        past failures; any other success changes nothing (and costs no Redis round trip)."""
        if permit.probe:
            self._run("success", token=permit.token, probe=True)

    def record_failure(self, permit: Permit) -> None:
        """The permitted call failed. While closed it counts towards ``failure_threshold``
        within ``failure_window`` (reaching it opens the breaker); a live probe's failure
        opens it again for a new reset period; otherwise it is ignored."""
        self._run("failure", token=permit.token, probe=permit.probe)

    def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        is_failure: Callable[[BaseException], bool] = _always,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)`` under the breaker. Raises :class:`BreakerOpen` without
        calling ``fn`` when rejected. Exceptions from ``fn`` are re-raised; those for which
        ``is_failure(exc)`` is true count as failures, others (e.g. a 404 the caller expects)
        as successes."""
        permit = self.acquire()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if is_failure(exc):
                self.record_failure(permit)
            else:
                self.record_success(permit)
            raise
        self.record_success(permit)
        return result

    def force_open(self) -> None:
        """Operator switch: reject every call until :meth:`force_close` (never half-open)."""
        self._run("force_open")

    def force_close(self) -> None:
        """Operator switch: close now, forgetting failures, probes and a forced open."""
        self._run("force_close")

    def snapshot(self) -> dict[str, Any]:
        """For admin and dashboards: name, state, failures (counted in the current window),
        opened_at (epoch seconds, None when closed), probes_in_flight, forced."""
        outcome = self._run("snapshot")
        return {
            "name": self.name,
            "state": outcome.state,
            "failures": outcome.failures,
            "opened_at": outcome.opened_at,
            "probes_in_flight": outcome.probes,
            "forced": outcome.forced,
        }

    # Plumbing ---------------------------------------------------------------------------------

    def _key(self) -> str:
        return f"breaker:{self.name}"

    def _run(self, op: str, *, token: str = "", probe: bool = False) -> _Outcome:
        config = self._config()
        outcome: _Outcome | None = None
        if cache_is_redis():
            outcome = cache_shared(
                "breaker", _fallback_warning, self.name,
                _redis_run, cache.make_key(self._key()), op, config, token, probe,
            )  # fmt: skip
        if outcome is None:
            outcome = _local.run(self._key(), op, config, token, probe)
        self._observe(op, outcome)
        return outcome

    def _observe(self, op: str, outcome: _Outcome) -> None:
        BREAKER_STATE.labels(self.name).set(_STATE_CODES[outcome.state])
        for state in outcome.transitions:
            BREAKER_TRANSITIONS.labels(self.name, state).inc()
            log = logger.warning if state == "open" else logger.info
            log("circuit breaker %r is now %s", self.name, state.replace("_", "-"))
            if state == "open" and op == "failure":
                self._alert_opened()

    def _alert_opened(self) -> None:
        """Failures opened the breaker (an operator's force_open alerts nobody). Only the call
        that made the transition reports it, so one opening is one alert however many
        processes share the breaker."""
        from shop.alerts import alert_raise  # the alerts module needs the models loaded

        alert_raise(
            kind="breaker_open",
            key=self.name,
            subject=f"Circuit breaker {self.name} opened",
            body=(
                f"{self.failure_threshold} failures within {self.failure_window:g} s opened "
                f"circuit breaker {self.name!r} (or a trial call failed while half-open). "
                f"Calls are refused for {self.reset_timeout:g} s, then a trial call is let "
                "through; its success closes the breaker again."
            ),
        )


# --- Retry ------------------------------------------------------------------------------------


def _never(exc: BaseException) -> bool:
    return False


def _breaker_rejection(exc: BaseException) -> bool:
    """True for BreakerOpen, also when raised as the explicit cause (``raise X from exc``) of
    a caller's own exception, e.g. a client's "channel unavailable"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BreakerOpen):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def backoff_cap(n: int, initial: float, multiplier: float, max_delay: float) -> float:
    """Upper bound of the delay before retry ``n`` (0-based): min(max, initial * mult ** n)."""
    try:
        return min(max_delay, initial * multiplier**n)
    except OverflowError:
        return max_delay


def backoff_delays(
    attempts: int,
    initial: float,
    multiplier: float,
    max_delay: float,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """The full-jitter delays slept between ``attempts`` calls (``attempts - 1`` of them)."""
    uniform = (rng or random).uniform
    for n in range(max(0, attempts - 1)):
        yield uniform(0, backoff_cap(n, initial, multiplier, max_delay))


def retry_call(
    fn: Callable[..., T],
    *args: Any,
    attempts: int | None = None,
    initial_delay: float | None = None,
    multiplier: float | None = None,
    max_delay: float | None = None,
    retriable: Callable[[BaseException], bool] = _never,
    sleep: Callable[[float], object] = time.sleep,
    rng: random.Random | None = None,
    **kwargs: Any,
) -> T:
    """Return ``fn(*args, **kwargs)``, calling it up to ``attempts`` times in all.

    An exception for which ``retriable(exc)`` is true is followed by a full-jitter sleep
    (``uniform(0, min(max_delay, initial_delay * multiplier ** n))``, n = 0 before the first
    retry) and another call; after the last attempt it is raised. Other exceptions, and always
    :class:`BreakerOpen` (also as the ``__cause__`` of another exception), are raised at once.
    None ⇒ ``RETRY_ATTEMPTS``, ``RETRY_INITIAL_DELAY``, ``RETRY_MULTIPLIER``,
    ``RETRY_MAX_DELAY``. ``sleep`` and ``rng`` (the jitter's source) are injectable for tests.
    """
    attempts = settings.RETRY_ATTEMPTS if attempts is None else attempts
    initial = settings.RETRY_INITIAL_DELAY if initial_delay is None else initial_delay
    factor = settings.RETRY_MULTIPLIER if multiplier is None else multiplier
    cap = settings.RETRY_MAX_DELAY if max_delay is None else max_delay
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    if initial < 0 or cap < 0 or factor <= 0:
        raise ValueError("delays must not be negative and the multiplier must be positive")
    delays = backoff_delays(attempts, initial, factor, cap, rng)
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts or _breaker_rejection(exc) or not retriable(exc):
                raise
            delay = next(delays)
            logger.info(
                "retrying %s after %s (attempt %d of %d) in %.2f s",
                getattr(fn, "__qualname__", fn),
                type(exc).__name__,
                attempt + 1,
                attempts,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
