"""Invariants 2–4 (no double charge, nothing lost, the ledger balances)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Sum

from apps.orders.models import OrderStatus
from apps.payments.models import (
    Account,
    Entry,
    Payment,
    PaymentStatus,
    Refund,
    TccTransaction,
    Transfer,
)
from shop.sharding.loops import shards_each

PAID_OR_LATER = {
    OrderStatus.PAID,
    OrderStatus.PROCESSING,
    OrderStatus.FULFILLED,
    OrderStatus.REFUNDED,
    OrderStatus.PARTIALLY_REFUNDED,
}
CHUNK = 2000


def ledger_violations() -> Iterator[str]:
    for transfer_id, total in (
        Entry.objects.values("transfer_id")
        .annotate(total=Sum("amount"))
        .exclude(total=0)
        .values_list("transfer_id", "total")
    ):
        yield f"transfer {transfer_id}: entries sum to {total}, not 0"
    sums: dict[tuple[int, str], int] = {
        (account_id, bucket): total
        for account_id, bucket, total in Entry.objects.values("account_id", "bucket")
        .annotate(total=Sum("amount"))
        .values_list("account_id", "bucket", "total")
    }
    for account in Account.objects.iterator(chunk_size=CHUNK):
        for bucket in ("available", "frozen"):
            expected = sums.get((account.id, bucket), 0)
            if getattr(account, bucket) != expected:
                yield (
                    f"account {account.key}: {bucket} {getattr(account, bucket)} but its "
                    f"entries sum to {expected}"
                )
        if (account.available < 0 and not account.allow_negative) or account.frozen < 0:
            yield f"account {account.key} is negative"
    # Frozen money must end captured or unfrozen once its payment's transaction is over.
    finished = set(
        TccTransaction.objects.filter(
            status__in=[TccTransaction.Status.CONFIRMED, TccTransaction.Status.CANCELLED]
        ).values_list("xid", flat=True)
    )
    settled = set(
        Transfer.objects.filter(kind__in=["wallet_capture", "wallet_unfreeze"]).values_list(
            "reference", flat=True
        )
    )
    for reference in Transfer.objects.filter(kind="wallet_freeze").values_list(
        "reference", flat=True
    ):
        if reference in finished and reference not in settled:
            yield f"frozen amount of {reference} leaked: neither captured nor released"


def _shard_violations(alias: str, captures: set[str], decisions: dict[int, str]) -> Iterator[str]:
    for order_id, count in (
        Payment.objects.using(alias)
        .filter(status=PaymentStatus.SUCCEEDED)
        .values("order_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("order_id", "n")
    ):
        yield f"order {order_id} has {count} captured payments"
    # Refunds owed or paid back per payment (pending ones are on their way: retried).
    refunded = dict(
        Refund.objects.using(alias)
        .exclude(status=Refund.Status.FAILED)
        .values("payment_id")
        .annotate(total=Sum("amount"))
        .values_list("payment_id", "total")
    )
    rows = (
        Payment.objects.using(alias)
        .select_related("order")
        .order_by("id")
        .only(
            "id",
            "status",
            "amount",
            "captured_amount",
            "refunded_amount",
            "order__status",
            "order__total",
        )
    )
    for payment in rows.iterator(chunk_size=CHUNK):
        if payment.amount != payment.order.total:
            yield f"payment {payment.id}: amount {payment.amount} != order total"
        decision = decisions.get(payment.id)
        if payment.status == PaymentStatus.SUCCEEDED:
            if payment.order.status == OrderStatus.CANCELLED:
                # A paid order the buyer cancelled: its refund must cover the capture.
                covered = refunded.get(payment.id, 0)
                if covered < payment.captured_amount:
                    yield (
                        f"payment {payment.id} captured {payment.captured_amount} but its "
                        f"order is cancelled and only {covered} is refunded"
                    )
            elif payment.order.status not in PAID_OR_LATER:
                yield f"payment {payment.id} succeeded but its order is {payment.order.status}"
            if f"pay-{payment.id}" not in captures:
                yield f"payment {payment.id} succeeded but the ledger has no capture for it"
            if decision != TccTransaction.Status.CONFIRMED:
                yield f"payment {payment.id} succeeded but its transaction is {decision}"
        elif payment.status == PaymentStatus.FAILED and decision not in (
            TccTransaction.Status.CANCELLED,
            None,
        ):
            yield f"payment {payment.id} failed but its transaction is {decision}"


def payment_violations() -> Iterator[str]:
    captures = set(
        Transfer.objects.filter(kind__in=["wallet_capture", "card_capture"]).values_list(
            "reference", flat=True
        )
    )
    decisions = dict(TccTransaction.objects.values_list("payment_id", "status"))
    found = shards_each(
        "audit_payments", lambda alias: list(_shard_violations(alias, captures, decisions))
    )
    for violations in found.values():
        yield from violations
