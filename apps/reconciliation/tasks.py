from __future__ import annotations

from celery import shared_task

from apps.reconciliation import services


@shared_task(name="apps.reconciliation.tasks.reconcile_previous_day", ignore_result=True)
def reconcile_previous_day() -> dict[str, str]:
    runs = services.reconcile_all(business_day=services.previous_business_day())
    return {run.channel: run.status for run in runs}


@shared_task(name="apps.reconciliation.tasks.payments_stuck_janitor", ignore_result=True)
def payments_stuck_janitor() -> dict[str, int]:
    result = services.payments_stuck_janitor()
    return {"settled": len(result.settled), "escalated": len(result.escalated)}
