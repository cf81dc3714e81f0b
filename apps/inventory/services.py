"""Stock writes. Every function here is idempotent per order: repeating a call has no second
effect. Stock rows are always updated in SKU order, so concurrent orders never deadlock."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime

from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from apps.inventory.exceptions import InvalidQuantity, OutOfStock, ReservationReleased
from apps.inventory.models import Reservation, Stock


def _check_quantity(quantity: object, *, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < low:
        raise InvalidQuantity(extra={"quantity": quantity})


@transaction.atomic(using="default")
def stock_receive(*, sku_id: int, quantity: int) -> None:
    """Put ``quantity`` more units of a SKU on sale (goods received)."""
    _check_quantity(quantity)
    Stock.objects.get_or_create(sku_id=sku_id)
    Stock.objects.filter(sku_id=sku_id).update(
        received=F("received") + quantity, available=F("available") + quantity
    )


@transaction.atomic(using="default")
def stock_receive_many(*, quantities: dict[int, int]) -> None:
    """Receive units for many SKUs at once (imports, seeding). A quantity of 0 only makes sure
    the SKU has a stock row. Negative or non-integer quantities raise and write nothing."""
    for quantity in quantities.values():
        _check_quantity(quantity, allow_zero=True)
    existing = set(Stock.objects.filter(sku_id__in=quantities).values_list("sku_id", flat=True))
    Stock.objects.bulk_create(
        [
            Stock(sku_id=sku_id, received=quantity, available=quantity)
            for sku_id, quantity in quantities.items()
            if sku_id not in existing
        ],
        batch_size=1000,
    )
    for sku_id in existing:
        if quantities[sku_id]:
            Stock.objects.filter(sku_id=sku_id).update(
                received=F("received") + quantities[sku_id],
                available=F("available") + quantities[sku_id],
            )


def stock_reserve(
    *,
    order_id: int,
    user_id: int,
    items: Sequence[tuple[int, int]],
    expires_at: datetime,
) -> list[Reservation]:
    """Hold ``items`` ((sku_id, quantity) pairs) for an order, all or nothing.

    Each SKU costs one conditional UPDATE (``available >= quantity``); no lock is held beyond
    this short local transaction. Raises OutOfStock naming the first SKU that ran short, and
    then nothing is held. A repeated call for an order that holds its reservations returns
    them, with no second hold (the one-line-per-SKU constraint decides; the caller, which
    reserves under a fresh order id, does not pay a read for it on every checkout).
    """
    for _, quantity in items:
        _check_quantity(quantity)
    try:
        if len({sku_id for sku_id, _ in items}) == 1 and connections["default"].vendor == (
            "postgresql"
        ):
            return [_reserve_one(order_id, user_id, items, expires_at)]
        return _reserve(order_id=order_id, user_id=user_id, items=items, expires_at=expires_at)
    except IntegrityError:
        # A concurrent call for the same order won; its reservations stand, ours rolled back.
        return list(Reservation.objects.filter(order_id=order_id))


# One SKU (most checkouts): the conditional UPDATE and the reservation's INSERT in one
# statement, atomic on its own, so it runs in autocommit: one round trip instead of BEGIN, two
# statements and COMMIT. No stock row changes unless the INSERT lands too.
_RESERVE_ONE_SQL = """
WITH taken AS (
    UPDATE inventory_stock SET available = available - %(quantity)s,
                               reserved = reserved + %(quantity)s
    WHERE sku_id = %(sku_id)s AND available >= %(quantity)s
    RETURNING sku_id
)
INSERT INTO inventory_reservation
    (order_id, user_id, sku_id, quantity, status, expires_at, created_at, updated_at)
SELECT %(order_id)s, %(user_id)s, sku_id, %(quantity)s, %(status)s, %(expires_at)s, %(now)s,
       %(now)s
FROM taken
RETURNING id
"""


def _reserve_one(
    order_id: int, user_id: int, items: Sequence[tuple[int, int]], expires_at: datetime
) -> Reservation:
    sku_id = items[0][0]
    quantity = sum(q for _, q in items)
    reservation = Reservation(
        order_id=order_id,
        user_id=user_id,
        sku_id=sku_id,
        quantity=quantity,
        status=Reservation.Status.HELD,
        expires_at=expires_at,
    )
    reservation.created_at = reservation.updated_at = timezone.now()
    connection = connections["default"]
    if connection.in_atomic_block:  # a caller's transaction: keep its failures contained
        context = transaction.atomic(using="default")
    else:
        context = contextlib.nullcontext()
    with context, connection.cursor() as cursor:
        cursor.execute(
            _RESERVE_ONE_SQL,
            {
                "quantity": quantity,
                "sku_id": sku_id,
                "order_id": order_id,
                "user_id": user_id,
                "status": Reservation.Status.HELD,
                "expires_at": expires_at,
                "now": reservation.created_at,
            },
        )
        row = cursor.fetchone()
    if row is None:
        raise OutOfStock(extra={"sku_id": sku_id})
    reservation.id = row[0]
    reservation._state.adding = False
    reservation._state.db = "default"
    return reservation


@transaction.atomic(using="default")
def _reserve(
    *, order_id: int, user_id: int, items: Sequence[tuple[int, int]], expires_at: datetime
) -> list[Reservation]:
    merged: dict[int, int] = {}
    for sku_id, quantity in items:
        merged[sku_id] = merged.get(sku_id, 0) + quantity
    for sku_id in sorted(merged):
        quantity = merged[sku_id]
        taken = Stock.objects.filter(sku_id=sku_id, available__gte=quantity).update(
            available=F("available") - quantity, reserved=F("reserved") + quantity
        )
        if not taken:
            raise OutOfStock(extra={"sku_id": sku_id})
    return Reservation.objects.bulk_create(
        [
            Reservation(
                order_id=order_id,
                user_id=user_id,
                sku_id=sku_id,
                quantity=merged[sku_id],
                expires_at=expires_at,
            )
            for sku_id in sorted(merged)
        ]
    )


def _settle(order_id: int, to: str) -> int:
    held = list(
        Reservation.objects.select_for_update()
        .filter(order_id=order_id, status=Reservation.Status.HELD)
        .order_by("sku_id")
    )
    for reservation in held:
        change = (
            {"available": F("available") + reservation.quantity}
            if to == Reservation.Status.RELEASED
            else {"sold": F("sold") + reservation.quantity}
        )
        Stock.objects.filter(sku_id=reservation.sku_id).update(
            reserved=F("reserved") - reservation.quantity, **change
        )
    Reservation.objects.filter(id__in=[r.id for r in held]).update(status=to)
    return sum(r.quantity for r in held)


@transaction.atomic(using="default")
def stock_release(*, order_id: int) -> int:
    """Give an order's held units back to ``available``. Returns the units released (0 when
    there was nothing held: already released, committed, or never reserved)."""
    return _settle(order_id, Reservation.Status.RELEASED)


@transaction.atomic(using="default")
def stock_commit(*, order_id: int) -> int:
    """Turn an order's held units into sold ones. Idempotent: committing again returns 0.
    Raises ReservationReleased if the units were already given back (the order expired)."""
    units = _settle(order_id, Reservation.Status.COMMITTED)
    if units == 0:
        statuses = set(
            Reservation.objects.filter(order_id=order_id).values_list("status", flat=True)
        )
        if not statuses or Reservation.Status.RELEASED in statuses:
            raise ReservationReleased(extra={"order_id": str(order_id)})
    return units


@transaction.atomic(using="default")
def stock_return(*, order_id: int) -> int:
    """Put a cancelled paid order's units back on sale: committed units move from ``sold`` to
    ``available``, units still held (the payment's commit had not landed) from ``reserved``;
    its reservations end `released`. ``received`` is unchanged, so sold + reserved + available
    == received holds (the CHECK constraints stand guard). Idempotent: returns the units
    returned, 0 the second time."""
    reservations = list(
        Reservation.objects.select_for_update()
        .filter(
            order_id=order_id,
            status__in=[Reservation.Status.HELD, Reservation.Status.COMMITTED],
        )
        .order_by("sku_id")
    )
    for reservation in reservations:
        source = "sold" if reservation.status == Reservation.Status.COMMITTED else "reserved"
        Stock.objects.filter(sku_id=reservation.sku_id).update(
            available=F("available") + reservation.quantity,
            **{source: F(source) - reservation.quantity},
        )
    Reservation.objects.filter(id__in=[r.id for r in reservations]).update(
        status=Reservation.Status.RELEASED
    )
    return sum(r.quantity for r in reservations)
