"""Reads for operators: the latest runs and the discrepancies waiting."""

from __future__ import annotations

from datetime import date

from django.db.models import Count, Max, QuerySet

from apps.reconciliation.models import Discrepancy, ReconciliationRun


def _newest(runs: QuerySet[ReconciliationRun], *per: str) -> QuerySet[ReconciliationRun]:
    """The highest-id (latest started) run of ``runs`` for each distinct value of ``per``."""
    ids = runs.values(*per).annotate(last=Max("id")).values_list("last", flat=True)
    return ReconciliationRun.objects.filter(id__in=list(ids))


def runs_latest() -> list[ReconciliationRun]:
    """The most recently started run of each channel, newest first."""
    return list(_newest(ReconciliationRun.objects.all(), "channel").order_by("-started_at"))


def runs_latest_completed_per_day(*, since: date) -> list[ReconciliationRun]:
    """The latest completed run of each (channel, business day) from ``since`` on: a day run
    again counts once, with what its latest completed run found."""
    completed = ReconciliationRun.objects.filter(
        business_day__gte=since, status=ReconciliationRun.Status.COMPLETED
    )
    return list(_newest(completed, "channel", "business_day").order_by("business_day", "channel"))


def discrepancies_open_by_kind() -> dict[str, int]:
    rows = (
        Discrepancy.objects.filter(status=Discrepancy.Status.OPEN)
        .values_list("kind")
        .annotate(n=Count("id"))
    )
    return dict(rows)
