from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.reconciliation.models import Discrepancy
from shop.errors import ValidationFailed


@transaction.atomic(using="default")
def discrepancy_resolve(
    *, discrepancy_ids: list[int], operator: AbstractBaseUser, note: str
) -> int:
    """Close open discrepancies with the operator's note (required). Returns how many."""
    if not note.strip():
        raise ValidationFailed("A note is required to resolve a discrepancy.")
    return Discrepancy.objects.filter(
        id__in=discrepancy_ids, status=Discrepancy.Status.OPEN
    ).update(
        status=Discrepancy.Status.RESOLVED,
        note=note.strip(),
        resolved_by=operator,
        resolved_at=timezone.now(),
    )
