"""Configuration operators change at run time in the admin: rate-limit layers and degradation
switches. Each process reads the database at most every RUNTIME_CONFIG_TTL seconds, so a
change is live everywhere within seconds, without a restart; if the database cannot be read the
last known values (or the settings' defaults) stay in force."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitRule:
    name: str
    rate: int
    period: float
    burst: int
    enabled: bool


class _Snapshot:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loaded_at = float("-inf")
        self.rules: dict[str, LimitRule] = {}
        self.switches: dict[str, bool] = {}

    def _defaults(self) -> tuple[dict[str, LimitRule], dict[str, bool]]:
        rules = {
            name: LimitRule(name, rate, float(period), burst, True)
            for name, (rate, period, burst) in settings.RATE_LIMITS.items()
        }
        return rules, dict.fromkeys(settings.SWITCHES, False)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.loaded_at < settings.RUNTIME_CONFIG_TTL:
            return
        # One thread reads the database; the others keep answering with the last snapshot
        # meanwhile instead of queueing behind it (a slow or unreachable `default` would
        # otherwise stall the whole process). The very first load and a forced one wait.
        if not self._lock.acquire(blocking=force or not self.rules):
            return
        try:
            if not force and now - self.loaded_at < settings.RUNTIME_CONFIG_TTL:
                return
            from shop.models import RateLimitRule, Switch

            rules, switches = self._defaults()
            try:
                for row in RateLimitRule.objects.all():
                    rules[row.name] = LimitRule(
                        row.name, row.rate, row.period_seconds, row.burst, row.enabled
                    )
                switches.update(Switch.objects.values_list("name", "on"))
            except DatabaseError as exc:
                logger.warning("runtime configuration not refreshed: %s", exc)
                if self.rules:  # keep the last known values
                    self.loaded_at = now
                    return
            self.rules, self.switches, self.loaded_at = rules, switches, now
        finally:
            self._lock.release()


_snapshot = _Snapshot()


def limit_rule(name: str) -> LimitRule | None:
    """The current rule of a rate-limit layer; None when the operators disabled it."""
    _snapshot.refresh()
    rule = _snapshot.rules.get(name)
    return rule if rule is not None and rule.enabled else None


def switch_on(name: str) -> bool:
    _snapshot.refresh()
    return _snapshot.switches.get(name, False)


def runtime_refresh() -> None:
    """Re-read now (after an operator's change in this process, and in tests)."""
    _snapshot.refresh(force=True)


def runtime_defaults() -> None:
    """Use the settings' defaults until the next refresh is due (tests start from here)."""
    with _snapshot._lock:
        _snapshot.rules, _snapshot.switches = _snapshot._defaults()
        _snapshot.loaded_at = time.monotonic()


def switches_current() -> dict[str, bool]:
    """Every known switch (settings.SWITCHES) and whether it is on, as this process sees it."""
    _snapshot.refresh()
    return {name: _snapshot.switches.get(name, False) for name in settings.SWITCHES}


def switch_set(*, name: str, on: bool, note: str = "") -> None:
    """Flip a degradation switch for every process (within RUNTIME_CONFIG_TTL), and retire the
    shared pages built under the old setting. Raises KeyError for an unknown switch."""
    from shop.cache import groups_bump
    from shop.models import Switch

    if name not in settings.SWITCHES:
        raise KeyError(name)
    Switch.objects.update_or_create(name=name, defaults={"on": on, "note": note[:200]})
    runtime_refresh()
    groups_bump(settings.PAGE_CACHE_GROUPS)
