"""The periodic invariant audit: the checks of ``audit_invariants``, watched.

Each check of ``AUDIT_CHECKS`` (the same list ``manage.py audit_invariants`` runs) yields its
violations. A check that finds some is run again ``INVARIANT_AUDIT_RECHECK_SECONDS`` later, and
only a check failing both times counts: the cross-database steps of the shop are not atomic,
and an audit may catch one half-way (an order paid, its stock committed a moment later). The
``shop_invariant_violations`` gauge is set per check, and each failing check raises an alert
(kind ``invariant``, key = the check's dotted path).
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.utils.module_loading import import_string

from shop.alerts import alert_raise
from shop.metrics import INVARIANT_VIOLATIONS

logger = logging.getLogger(__name__)

# Violations quoted in an alert's body; the count says how many there are in all.
QUOTED_VIOLATIONS = 20


def _run(path: str) -> tuple[int, list[str]] | None:
    """(violations found, the first few); None if the check could not run."""
    found, quoted = 0, []
    try:
        for violation in import_string(path)():
            found += 1
            if len(quoted) < QUOTED_VIOLATIONS:
                quoted.append(str(violation))
    except Exception:  # one check that cannot run must not stop the others
        logger.exception("invariant check %s could not run", path)
        return None
    return found, quoted


def invariants_audit() -> dict[str, int]:
    """Run every check, set the gauge, alert on each check failing twice in a row. Returns
    the violations found per check (checks that could not run are left out)."""
    results = {path: _run(path) for path in settings.AUDIT_CHECKS}
    failing = [path for path, result in results.items() if result and result[0]]
    if failing and settings.INVARIANT_AUDIT_RECHECK_SECONDS > 0:
        time.sleep(settings.INVARIANT_AUDIT_RECHECK_SECONDS)
        results.update({path: _run(path) for path in failing})
    counts = {}
    for path, result in results.items():
        if result is None:
            continue
        found, quoted = result
        counts[path] = found
        INVARIANT_VIOLATIONS.labels(path).set(found)
        if found:
            more = f"\n… and {found - len(quoted)} more" if found > len(quoted) else ""
            alert_raise(
                kind="invariant",
                key=path,
                severity="critical",
                subject=f"Invariant violated: {path} found {found} violation(s)",
                body="\n".join(quoted)
                + more
                + "\n\nRun `python manage.py audit_invariants` for the full list.",
            )
    return counts
