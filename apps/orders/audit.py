"""Invariants 1 and 3 as seen from the orders: every order's stock is in the state its status
says, and no stock is held for an order that does not exist. Streams each shard in chunks."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Sum

from apps.inventory.models import Reservation
from apps.inventory.selectors import reservation_states
from apps.orders.models import Order, OrderLine, OrderStatus
from apps.orders.selectors import orphan_cutoff, reservations_orphaned
from shop.sharding import shard_for_id
from shop.sharding.loops import shards_each

S = OrderStatus
EXPECTED_RESERVATIONS = {
    S.PENDING_PAYMENT: {Reservation.Status.HELD},
    S.PAID: {Reservation.Status.COMMITTED},
    S.PROCESSING: {Reservation.Status.COMMITTED},
    S.FULFILLED: {Reservation.Status.COMMITTED},
    S.REFUNDED: {Reservation.Status.COMMITTED},
    S.PARTIALLY_REFUNDED: {Reservation.Status.COMMITTED},
    S.CANCELLED: {Reservation.Status.RELEASED},
    S.EXPIRED: {Reservation.Status.RELEASED},
}
CHUNK = 2000


def _orders(alias: str) -> Iterator[list[tuple[int, str, int]]]:
    chunk: list[tuple[int, str, int]] = []
    rows = Order.objects.using(alias).order_by("id").values_list("id", "status", "total")
    for row in rows.iterator(chunk_size=CHUNK):
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _shard_violations(alias: str) -> list[str]:
    violations = []
    for chunk in _orders(alias):
        ids = [order_id for order_id, _, _ in chunk]
        states = reservation_states(ids)
        totals = dict(
            OrderLine.objects.using(alias)
            .filter(order_id__in=ids)
            .values("order_id")
            .annotate(sum=Sum("line_total"))
            .values_list("order_id", "sum")
        )
        for order_id, status, total in chunk:
            named = shard_for_id(order_id)
            if named != alias:
                violations.append(f"order {order_id} is on {alias} but its id names {named}")
            if totals.get(order_id) != total:
                violations.append(
                    f"order {order_id}: total {total} != sum of lines {totals.get(order_id)}"
                )
            found = states.get(order_id, set())
            if found != EXPECTED_RESERVATIONS[status]:
                violations.append(
                    f"order {order_id} is {status} but its reservations are "
                    f"{sorted(found) or 'missing'}"
                )
    return violations


def order_violations() -> Iterator[str]:
    """A shard that does not answer is skipped and reported (``shards_each``), not a crash of
    the whole audit."""
    for violations in shards_each("audit_orders", _shard_violations).values():
        yield from violations
    # Stock held for an order that was never written, which the expiry sweep has had a run to
    # release (the same definition of an orphan as the sweep's).
    for order_id in reservations_orphaned(
        held_before=orphan_cutoff(audit=True), loop="audit_orders"
    ):
        yield f"reservation held for order {order_id}, which does not exist"
