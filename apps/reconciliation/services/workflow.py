from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.reconciliation.models import Discrepancy
from apps.reconciliation.services.runs import REVIEW_KIND, discrepancy_review_reference
from shop.errors import ValidationFailed
from shop.review import review_close


@transaction.atomic(using="default")
def discrepancy_resolve(
    *, discrepancy_ids: list[int], operator: AbstractBaseUser, note: str
) -> int:
    """Close open discrepancies with the operator's note (required), and the review items
    filed for them with it: one decision, not two queues to keep in step. Returns how many
    discrepancies."""
    if not note.strip():
        raise ValidationFailed("A note is required to resolve a discrepancy.")
    open_ids = list(
        Discrepancy.objects.filter(id__in=discrepancy_ids, status=Discrepancy.Status.OPEN)
        .select_for_update()
        .values_list("id", flat=True)
    )
    Discrepancy.objects.filter(id__in=open_ids).update(
        status=Discrepancy.Status.RESOLVED,
        note=note.strip(),
        resolved_by=operator,
        resolved_at=timezone.now(),
    )
    review_close(
        kind=REVIEW_KIND,
        references=[discrepancy_review_reference(pk) for pk in open_ids],
        operator=operator,
        note=note,
    )
    return len(open_ids)
