"""The manual-review queue: what the shop could not settle by itself, for operators."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from shop.metrics import REVIEW_ITEMS_FILED
from shop.models import ManualReviewItem


def review_waiting() -> list[dict[str, Any]]:
    """Items waiting for an operator (open, not yet assigned) by kind: ``kind``, ``n`` and the
    ``oldest`` filing time, most first. The dashboard and the metrics both count these."""
    from django.db.models import Count, Min

    return list(
        ManualReviewItem.objects.filter(status=ManualReviewItem.Status.OPEN)
        .values("kind")
        .annotate(n=Count("id"), oldest=Min("created_at"))
        .order_by("-n")
    )


def review_file(
    *, kind: str, reference: str, summary: str, details: dict[str, Any] | None = None
) -> tuple[ManualReviewItem, bool]:
    """File an item, unless one is already open for (kind, reference). Returns (item, filed)."""
    try:
        with transaction.atomic(using="default"):
            item = ManualReviewItem.objects.create(
                kind=kind, reference=reference, summary=summary[:300], details=details or {}
            )
    except IntegrityError:
        existing = ManualReviewItem.objects.exclude(status=ManualReviewItem.Status.RESOLVED).get(
            kind=kind, reference=reference
        )
        return existing, False
    REVIEW_ITEMS_FILED.labels(kind).inc()
    return item, True


@transaction.atomic(using="default")
def review_assign(*, item_ids: list[int], assignee: AbstractBaseUser) -> int:
    return (
        ManualReviewItem.objects.filter(id__in=item_ids)
        .exclude(status=ManualReviewItem.Status.RESOLVED)
        .update(status=ManualReviewItem.Status.ASSIGNED, assignee=assignee)
    )


@transaction.atomic(using="default")
def review_resolve(*, item: ManualReviewItem, operator: AbstractBaseUser, note: str) -> None:
    """Close an item with the operator's note (required: the next person must know why)."""
    from shop.errors import ValidationFailed

    if not note.strip():
        raise ValidationFailed("A resolution note is required.")
    if not _resolve(ManualReviewItem.objects.filter(id=item.id), operator=operator, note=note):
        raise ValidationFailed("This item is already resolved.")


@transaction.atomic(using="default")
def review_close(*, kind: str, references: list[str], operator: AbstractBaseUser, note: str) -> int:
    """Close the open items of ``kind`` filed under ``references`` (their subject was settled
    elsewhere, e.g. a discrepancy resolved in its own admin) with the operator's note. Returns
    how many."""
    items = ManualReviewItem.objects.filter(kind=kind, reference__in=references)
    return _resolve(items, operator=operator, note=note)


def _resolve(items: QuerySet[ManualReviewItem], *, operator: AbstractBaseUser, note: str) -> int:
    return items.exclude(status=ManualReviewItem.Status.RESOLVED).update(
        status=ManualReviewItem.Status.RESOLVED,
        resolution_note=note.strip(),
        resolved_by=operator,
        resolved_at=timezone.now(),
    )
