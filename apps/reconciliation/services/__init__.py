"""Reconciliation writes: settlement files, runs, discrepancy handling, the stuck janitor."""

from apps.reconciliation.services.files import (
    settlement_fetch,
    settlement_import,
    settlement_lines,
)
from apps.reconciliation.services.janitor import payments_stuck_janitor
from apps.reconciliation.services.runs import (
    business_day_bounds,
    previous_business_day,
    reconcile_all,
    reconcile_day,
)
from apps.reconciliation.services.workflow import discrepancy_resolve

__all__ = [
    "business_day_bounds",
    "discrepancy_resolve",
    "payments_stuck_janitor",
    "previous_business_day",
    "reconcile_all",
    "reconcile_day",
    "settlement_fetch",
    "settlement_import",
    "settlement_lines",
]
