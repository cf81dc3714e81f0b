"""The stuck-payments janitor: payments left `unknown` or `pending` longer than
PAYMENT_STUCK_AFTER are settled from their channel's own answer, or escalated — never marked
paid or failed by guess."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from apps.payments.models import Payment, PaymentStatus
from apps.payments.services import payment_settle_now
from apps.payments.services.channels import ChannelError
from shop.review import review_file
from shop.sharding.loops import shards_each

logger = logging.getLogger(__name__)


@dataclass
class JanitorResult:
    settled: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)


def payments_stuck_janitor(*, limit: int = 200) -> JanitorResult:
    result = JanitorResult()
    cutoff = timezone.now() - timedelta(seconds=settings.PAYMENT_STUCK_AFTER)

    def janitor_shard(alias: str) -> None:
        stuck = list(
            Payment.objects.using(alias)
            .filter(
                status__in=[PaymentStatus.UNKNOWN, PaymentStatus.PENDING], updated_at__lt=cutoff
            )
            .order_by("updated_at")
            .values_list("id", flat=True)[:limit]
        )
        for payment_id in stuck:
            details = {"shard": alias}
            try:
                payment_settle_now(payment_id=payment_id)
            except (ChannelError, DatabaseError) as exc:
                logger.warning("stuck payment %s not settled: %s", payment_id, exc)
            except Exception as exc:  # one payment that cannot be settled must not stop the rest
                logger.exception("stuck payment %s could not be settled", payment_id)
                details["error"] = f"{type(exc).__name__}: {exc}"[:300]
            status = Payment.objects.using(alias).get(id=payment_id).status
            if status in (PaymentStatus.UNKNOWN, PaymentStatus.PENDING):
                why = (
                    "settling it failed (see the error)"
                    if "error" in details
                    else "its channel gives no definite answer"
                )
                review_file(
                    kind="stuck_payment",
                    reference=str(payment_id),
                    summary=f"payment {payment_id} is still {status}: {why}; "
                    "settle it with the bank",
                    details=details,
                )
                result.escalated.append(payment_id)
            else:
                result.settled.append(payment_id)

    shards_each("payments_stuck_janitor", janitor_shard)
    return result
