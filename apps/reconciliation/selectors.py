"""Reads for operators: the latest runs and the discrepancies waiting."""

from __future__ import annotations

from django.db.models import Count, Max

from apps.reconciliation.models import Discrepancy, ReconciliationRun


def runs_latest() -> list[ReconciliationRun]:
    """The most recently started run of each channel, newest first."""
    newest = ReconciliationRun.objects.values("channel").annotate(last=Max("id"))
    ids = [row["last"] for row in newest]
    return list(ReconciliationRun.objects.filter(id__in=ids).order_by("-started_at"))


def discrepancies_open_by_kind() -> dict[str, int]:
    rows = (
        Discrepancy.objects.filter(status=Discrepancy.Status.OPEN)
        .values_list("kind")
        .annotate(n=Count("id"))
    )
    return dict(rows)
