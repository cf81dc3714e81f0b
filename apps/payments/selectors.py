from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Sum

from apps.payments.models import Account, Payment, PaymentChannel, Refund
from apps.payments.services.ledger import wallet_account
from shop.sharding import order_shard_aliases, shard_for_id
from shop.sharding.ids import id_floor, id_is_plausible, id_minute, id_minute_start
from shop.sharding.loops import shards_each


def payment_get(*, payment_id: int, user_id: int | None = None) -> Payment | None:
    if not id_is_plausible(payment_id):
        return None
    queryset = Payment.objects.using(shard_for_id(payment_id)).filter(id=payment_id)
    if user_id is not None:
        queryset = queryset.filter(user_id=user_id)
    return queryset.prefetch_related("attempts").first()


def card_channel_codes() -> list[str]:
    """The codes of the channels that take cards (and settle them in files), by code."""
    return [c.code for c in PaymentChannel.objects.order_by("code") if "card" in c.methods]


def refund_get(*, refund_id: int) -> Refund | None:
    if not id_is_plausible(refund_id):
        return None
    return Refund.objects.using(shard_for_id(refund_id)).filter(id=refund_id).first()


def wallet_get(*, user_id: int, currency: str = "EUR") -> Account:
    """The buyer's wallet (created empty on first sight)."""
    return wallet_account(user_id=user_id, currency=currency)


@dataclass(frozen=True)
class SettledItem:
    """What the shop believes a channel settled for one payment on one day."""

    payment_id: int
    type: str  # "capture" | "refund"
    amount: int
    currency: str
    count: int  # refunds: how many were summed


CHUNK = 5000


def _captures(alias: str, channel: str, start: datetime, end: datetime) -> Iterator[SettledItem]:
    rows = (
        Payment.objects.using(alias)
        .filter(method="card", channel=channel, captured_amount__gt=0)
        .filter(settled_at__gte=start, settled_at__lt=end)
        .order_by("id")
        .values_list("id", "captured_amount", "currency")
    )
    for payment_id, amount, currency in rows.iterator(chunk_size=CHUNK):
        yield SettledItem(payment_id, "capture", amount, currency, 1)


def _refunds(alias: str, channel: str, start: datetime, end: datetime) -> Iterator[SettledItem]:
    rows = (
        Refund.objects.using(alias)
        .filter(status=Refund.Status.SUCCEEDED, payment__channel=channel)
        .filter(updated_at__gte=start, updated_at__lt=end)
        .values("payment_id", "payment__currency")
        .annotate(total=Sum("amount"), n=Count("id"))
        .order_by("payment_id")
        .values_list("payment_id", "total", "payment__currency", "n")
    )
    for payment_id, amount, currency, count in rows.iterator(chunk_size=CHUNK):
        yield SettledItem(payment_id, "refund", amount, currency, count)


def settled_items(*, channel: str, start: datetime, end: datetime) -> Iterator[SettledItem]:
    """Every capture and (per payment, summed) refund the shop booked at ``channel`` in
    [start, end), across all shards, in (payment id, type) order — streamed, so memory stays
    flat however many there are."""
    streams = [
        stream(alias, channel, start, end)
        for alias in order_shard_aliases()
        for stream in (_captures, _refunds)
    ]
    return heapq.merge(*streams, key=lambda item: (item.payment_id, item.type))


# --- Live channel health (dashboard, metrics) ---------------------------------------------------


@dataclass(frozen=True)
class ChannelHealth:
    code: str
    name: str
    enabled: bool
    breaker_state: str  # closed | half_open | open
    breaker_forced: bool
    breaker_failures: int
    calls: int  # within the live-health window
    success_rate: float | None
    mean_latency_ms: float | None


def channels_health() -> list[ChannelHealth]:
    """Every channel with its breaker (shared through Redis) and live-health window."""
    from apps.payments.services.channels import breaker_for, health_for

    result = []
    for channel in PaymentChannel.objects.order_by("priority", "code"):
        snapshot = breaker_for(channel.code).snapshot()
        stats = health_for(channel.code).read()
        result.append(
            ChannelHealth(
                code=channel.code,
                name=channel.name,
                enabled=channel.enabled,
                breaker_state=snapshot["state"],
                breaker_forced=bool(snapshot.get("forced")),
                breaker_failures=int(snapshot.get("failures") or 0),
                calls=stats.total if stats else 0,
                success_rate=stats.success_rate if stats else None,
                mean_latency_ms=stats.mean_latency_ms if stats else None,
            )
        )
    return result


def payments_per_minute(*, since: datetime) -> dict[datetime, dict[str, int]]:
    """Payments started per minute since ``since`` by their status now, over every shard."""
    counts: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def count_shard(alias: str) -> None:
        rows = (
            Payment.objects.using(alias)
            .filter(id__gte=id_floor(since))
            .annotate(minute=id_minute())
            .values("minute", "status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in list(rows):
            counts[id_minute_start(row["minute"])][row["status"]] += row["n"]

    shards_each("payments_per_minute", count_shard)
    return {minute: dict(by_status) for minute, by_status in counts.items()}
