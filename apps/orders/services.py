"""Order writes: checkout, the state machine, expiry, and fulfilment.

Stock lives on `default`, orders on the buyer's shard, so no single transaction covers both.
The order's status on its shard is the source of truth and every cross-database step is
idempotent and repaired by the expiry sweep: a reservation whose order never got written is
released, an expired or cancelled order's reservation is released, a paid order's is
committed. Nothing is held across a network call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from apps.catalog.selectors import SkuForCheckout, skus_for_checkout
from apps.inventory.exceptions import ReservationReleased
from apps.inventory.selectors import reservation_states, reservations_held_expired
from apps.inventory.services import stock_commit, stock_release, stock_reserve, stock_return
from apps.orders.exceptions import (
    CheckoutInvalid,
    FulfilmentFailed,
    InvalidOrderState,
    OrderNotFound,
    PurchaseLimitExceeded,
)
from apps.orders.locks import buyer_checkout_lock
from apps.orders.metrics import checkout_counted
from apps.orders.models import (
    FulfilmentStep,
    LoyaltyEntry,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
)
from apps.orders.selectors import orphan_cutoff, reservations_orphaned
from shop.alerts import alert_raise
from shop.logs import log_context_bind
from shop.metrics import DEAD_LETTERS
from shop.outbox import consume_once, outbox_enqueue, outbox_write
from shop.review import review_file
from shop.rowwrites import RowWrite, insert_sql, inserted, known, rows_write, update_sql
from shop.sharding import logical_shard_for_user, order_shard_aliases, shard_for_id, shard_for_user
from shop.sharding.ids import id_generate, id_is_plausible
from shop.sharding.loops import shards_each

logger = logging.getLogger(__name__)

S = OrderStatus
# Legal transitions; anything else is refused with `invalid_state`.
TRANSITIONS: dict[str, set[str]] = {
    S.PENDING_PAYMENT: {S.PAID, S.CANCELLED, S.EXPIRED},
    # paid → cancelled: the buyer cancels before fulfilment starts (the payments app refunds
    # it in the same shard transaction, see order_cancel_paid).
    S.PAID: {S.PROCESSING, S.CANCELLED, S.REFUNDED, S.PARTIALLY_REFUNDED},
    S.PROCESSING: {S.FULFILLED, S.REFUNDED, S.PARTIALLY_REFUNDED},
    S.FULFILLED: {S.REFUNDED, S.PARTIALLY_REFUNDED},
    S.PARTIALLY_REFUNDED: {S.REFUNDED, S.PARTIALLY_REFUNDED},
}
# Statuses in which an order's units count as the buyer's (per-user limits).
HOLDING_STATUSES = [S.PENDING_PAYMENT, S.PAID, S.PROCESSING, S.FULFILLED]
SYSTEM = "system"

PROCESS_TASK = "apps.orders.tasks.order_process"
DEAD_LETTER_TASK = "apps.orders.tasks.order_dead_letter"
PLACED_NOTIFY_TASK = "apps.orders.tasks.order_placed_notify"
STOCK_RETURN_TASK = "apps.orders.tasks.order_stock_return"


def user_actor(user_id: int) -> str:
    return f"user:{user_id}"


# --- Checkout ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutLine:
    sku: SkuForCheckout
    quantity: int

    @property
    def total(self) -> int:
        return self.sku.price * self.quantity


def _checkout_lines(items: Sequence[dict[str, Any]]) -> list[CheckoutLine]:
    """Validate requested items against the live catalog; raise with every problem at once."""
    if not items:
        raise CheckoutInvalid("The order has no items.", extra={"fields": {"items": ["Empty."]}})
    if len(items) > settings.ORDER_MAX_LINES:
        raise CheckoutInvalid(
            f"At most {settings.ORDER_MAX_LINES} different items per order.",
            extra={"fields": {"items": [f"More than {settings.ORDER_MAX_LINES} lines."]}},
        )
    wanted: dict[str, int] = {}
    for item in items:
        wanted[item["sku"]] = wanted.get(item["sku"], 0) + item["quantity"]
    skus = skus_for_checkout(wanted)
    problems: dict[str, list[str]] = {}
    for code, quantity in wanted.items():
        sku = skus.get(code)
        if sku is None or not sku.sellable:
            problems[code] = ["This item is not for sale."]
        elif not 1 <= quantity <= settings.ORDER_LINE_MAX_QUANTITY:
            problems[code] = [f"Quantity must be 1 to {settings.ORDER_LINE_MAX_QUANTITY}."]
    if problems:
        raise CheckoutInvalid(extra={"fields": {"items": problems}})
    currencies = {skus[code].currency for code in wanted}
    if len(currencies) > 1:
        raise CheckoutInvalid("All items of one order must be in one currency.")
    return [CheckoutLine(skus[code], quantity) for code, quantity in wanted.items()]


def _check_per_user_limits(alias: str, user_id: int, lines: Sequence[CheckoutLine]) -> None:
    limited = {line.sku.id: line for line in lines if line.sku.per_user_limit is not None}
    if not limited:
        return
    held: dict[int, int] = {}
    for sku_id, quantity in (
        OrderLine.objects.using(alias)
        .filter(user_id=user_id, sku_id__in=limited, order__status__in=HOLDING_STATUSES)
        .values_list("sku_id", "quantity")
    ):
        held[sku_id] = held.get(sku_id, 0) + quantity
    for sku_id, line in limited.items():
        if held.get(sku_id, 0) + line.quantity > line.sku.per_user_limit:
            raise PurchaseLimitExceeded(
                f"{line.sku.name}: at most {line.sku.per_user_limit} per buyer.",
                extra={"sku": line.sku.code, "limit": line.sku.per_user_limit},
            )


@checkout_counted
def order_place(
    *,
    user_id: int,
    items: Sequence[dict[str, Any]],
    also_write: Callable[[Order], Sequence[RowWrite]] | None = None,
) -> Order:
    """Check out ``items`` ([{"sku": code, "quantity": n}]) for a buyer.

    Validates against the live catalog, snapshots names and prices, reserves the stock
    (all or nothing; OutOfStock otherwise) and writes the order (`pending_payment`, expiring
    after ORDER_RESERVATION_TTL) on the buyer's shard. ``also_write(order)`` gives rows the
    caller writes in the order's own statement (the idempotency key's stored response, a
    ticket settled); one of them refusing rolls the order back. If the order cannot be
    written, the reservation is released again: no stock is held without an order.
    """
    lines = _checkout_lines(items)
    alias = shard_for_user(user_id)
    limited = any(line.sku.per_user_limit is not None for line in lines)
    lock = buyer_checkout_lock(alias=alias, user_id=user_id) if limited else nullcontext()
    with lock:
        _check_per_user_limits(alias, user_id, lines)
        # The shard is touched first: if it is down we fail here, before holding any stock.
        order_id = id_generate(alias=alias, logical=logical_shard_for_user(user_id))
        log_context_bind(order_id=order_id, payment_id=None)  # a new order: drop an older payment
        expires_at = timezone.now() + timedelta(seconds=settings.ORDER_RESERVATION_TTL)
        stock_reserve(
            order_id=order_id,
            user_id=user_id,
            items=[(line.sku.id, line.quantity) for line in lines],
            expires_at=expires_at,
        )
        try:
            order = _order_write(alias, order_id, user_id, lines, expires_at, also_write)
        except BaseException:
            _release_quietly(order_id)
            raise
    logger.info("order %s placed: %s line(s), %s %s", order.id, len(lines), order.total,
                order.currency)  # fmt: skip
    return order


def _release_quietly(order_id: int) -> None:
    try:
        stock_release(order_id=order_id)
    except DatabaseError:
        # The expiry sweep releases reservations whose order never appeared.
        logger.exception("could not release the reservation of unwritten order %s", order_id)


def _order_write(
    alias: str,
    order_id: int,
    user_id: int,
    lines: Sequence[CheckoutLine],
    expires_at: Any,
    also_write: Callable[[Order], Sequence[RowWrite]] | None,
) -> Order:
    """The order, its lines, its `created` event, its outbox message and the caller's rows:
    one transaction on the shard, on PostgreSQL one statement."""
    now = timezone.now()
    order = Order(
        id=order_id,
        user_id=user_id,
        currency=lines[0].sku.currency,
        total=sum(line.total for line in lines),
        expires_at=expires_at,
        created_at=now,
        updated_at=now,
    )
    order._state.db = alias  # its lines and event follow it to the shard
    order_lines = [
        OrderLine(
            order=order,
            user_id=user_id,
            sku_id=line.sku.id,
            sku_code=line.sku.code,
            product_id=line.sku.product_id,
            name=line.sku.name,
            unit_price=line.sku.price,
            quantity=line.quantity,
            line_total=line.total,
        )
        for line in lines
    ]
    event = _event_row(order, "created", "", S.PENDING_PAYMENT, actor=user_actor(user_id), at=now)
    # The lines are known: callers reading order.lines.all() need no second query (stored the
    # way prefetch_related stores them). A new order has no payments and no refund requests.
    order._prefetched_objects_cache = {
        "lines": known(OrderLine.objects.using(alias).filter(order=order), order_lines),
        "payments": known(order.payments.none(), []),
        "refund_requests": known(order.refund_requests.none(), []),
    }
    with transaction.atomic(using=alias):
        notify = outbox_write(
            using=alias,
            user_id=user_id,
            task=PLACED_NOTIFY_TASK,
            kwargs={"order_id": str(order.id)},
            queue=settings.NOTIFICATIONS_QUEUE,
        )
        extra = [notify, *(also_write(order) if also_write is not None else ())]
        _order_rows_insert(alias, order, order_lines, event, extra)
    return order


def _order_rows_insert(
    alias: str, order: Order, lines: list[OrderLine], event: OrderEvent, extra: list[RowWrite]
) -> None:
    """Write a new order, its lines, its `created` event and ``extra`` (inside the caller's
    transaction on ``alias``); the instances get their ids and are marked saved.

    On PostgreSQL it is one statement (data-modifying CTEs; the lines' foreign key to the order
    is checked at the end of the statement), not one ORM round trip per row: checkout is the
    hot path. Elsewhere (the embedded SQLite profile) the ORM writes the order's rows."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        order.save(using=alias, force_insert=True)
        OrderLine.objects.using(alias).bulk_create(lines)
        event.save(using=alias, force_insert=True)
        rows_write(alias, extra)
        return

    def lines_written(values: list[Any]) -> None:
        ids_by_sku = {sku_id: line_id for line_id, sku_id in values}  # one line per SKU
        for line in lines:
            line.id = ids_by_sku[line.sku_id]

    def event_written(values: list[Any]) -> None:
        event.id = values[0]

    rows_write(alias, [
        RowWrite(*insert_sql(connection, [order])),
        RowWrite(*insert_sql(connection, lines), returning="ARRAY[id, sku_id]",
                 done=lines_written),
        RowWrite(*insert_sql(connection, [event]), returning="id", done=event_written),
        *extra,
    ])  # fmt: skip
    inserted(order, event, *lines, using=alias)


# --- Reading what a service needs --------------------------------------------------------------


def _order_for_update(order_id: int) -> Order:
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    alias = shard_for_id(order_id)
    order = Order.objects.using(alias).filter(id=order_id).first()
    if order is None:
        raise OrderNotFound()
    return order


def _locked(order: Order) -> Order:
    """The order's row, locked for the rest of the current transaction on its shard."""
    return Order.objects.using(order._state.db).select_for_update().get(id=order.id)


def order_payment_start(*, order: Order, locked: bool = False) -> Order:
    """A payment begins (inside the caller's transaction on the order's shard): the order must
    be unpaid and not expired; it then can neither expire nor be cancelled until
    :func:`order_payment_end` or :func:`order_mark_paid`. Raises InvalidOrderState.
    ``locked``: the caller already holds the row's lock (:func:`order_lock`)."""
    locked = order if locked else _locked(order)
    rows_write(order._state.db, order_payment_start_writes(order=locked))
    return locked


def order_payment_start_writes(*, order: Order) -> list[RowWrite]:
    """:func:`order_payment_start` as rows (``shop.rowwrites``) for an order whose row the
    caller has locked (:func:`order_lock`), written with the payment's own rows. Raises
    InvalidOrderState at once when it cannot be paid."""
    if order.status != S.PENDING_PAYMENT:
        raise InvalidOrderState(
            f"An order that is {order.status.replace('_', ' ')} cannot be paid.",
            extra={"status": order.status},
        )
    now = timezone.now()
    if order.expires_at <= now:
        raise InvalidOrderState(
            "This order's reservation has expired.", extra={"status": order.status}
        )
    order.payment_started_at = now
    sql, params = update_sql(connections[order._state.db], Order, {"payment_started_at": now},
                             {"id": order.id})  # fmt: skip
    return [RowWrite(sql, params)]


def order_payment_end(*, order: Order) -> None:
    """The payment did not go through (inside the caller's shard transaction): the order is
    payable again until it expires."""
    Order.objects.using(order._state.db).filter(id=order.id).update(payment_started_at=None)


def _event(
    order: Order,
    kind: str,
    from_status: str,
    to_status: str,
    *,
    actor: str,
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    _event_row(order, kind, from_status, to_status, actor=actor, reason=reason,
               data=data).save(using=order._state.db, force_insert=True)  # fmt: skip


def _event_row(
    order: Order,
    kind: str,
    from_status: str,
    to_status: str,
    *,
    actor: str,
    reason: str = "",
    data: dict[str, Any] | None = None,
    at: Any = None,
) -> OrderEvent:
    """An unsaved history event of ``order`` (written by :func:`_event`, or as a row of a
    statement by the hot path)."""
    return OrderEvent(
        order=order,
        user_id=order.user_id,
        kind=kind,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        reason=reason[:300],
        data=data or {},
        created_at=at or timezone.now(),
    )


def _transition(order: Order, to: str, *, actor: str, reason: str = "", **fields: Any) -> Order:
    """Move ``order`` to ``to`` if that is legal from its current status, atomically against
    concurrent changes (conditional UPDATE). Must run inside a transaction on its shard."""
    rows_write(order._state.db, _transition_writes(order, to, actor=actor, reason=reason,
                                                   **fields))  # fmt: skip
    return order


def _transition_writes(
    order: Order, to: str, *, actor: str, reason: str = "", **fields: Any
) -> list[RowWrite]:
    """:func:`_transition` as rows (``shop.rowwrites``): the conditional UPDATE, whose
    ``done`` raises InvalidOrderState when the order changed meanwhile (rolling every write of
    the statement back) and otherwise updates ``order``, and the `status_changed` event."""
    alias = order._state.db
    current = order.status
    if to not in TRANSITIONS.get(current, set()):
        raise InvalidOrderState(
            f"An order that is {current.replace('_', ' ')} cannot become {to.replace('_', ' ')}.",
            extra={"status": current},
        )
    now = timezone.now()
    connection = connections[alias]

    def moved(values: list[Any]) -> None:
        if not values:
            fresh = Order.objects.using(alias).get(id=order.id)
            raise InvalidOrderState(
                f"The order changed meanwhile; it is now {fresh.status.replace('_', ' ')}.",
                extra={"status": fresh.status},
            )
        order.status = to
        order.updated_at = now
        for name, value in fields.items():
            setattr(order, name, value)

    event = _event_row(order, "status_changed", current, to, actor=actor, reason=reason, at=now)
    moving = update_sql(
        connection, Order, {"status": to, "updated_at": now, **fields},
        {"id": order.id, "status": current},
    )  # fmt: skip
    return [RowWrite(*moving, done=moved), RowWrite(*insert_sql(connection, [event]))]


# --- Cancel, expire, paid ---------------------------------------------------------------------


def _refuse_while_paying(order: Order) -> None:
    if order.payment_started_at is not None and order.status == S.PENDING_PAYMENT:
        raise InvalidOrderState(
            "A payment of this order is in progress; try again in a moment.",
            extra={"status": order.status},
        )


def order_cancel(
    *,
    order_id: int,
    actor: str,
    reason: str = "",
    owner_id: int | None = None,
    on_cancelled: Callable[[Order], None] | None = None,
) -> Order:
    """Cancel an unpaid order and give its stock back. ``owner_id`` restricts it to the
    buyer's own orders (others' answer OrderNotFound). Refused while a payment is running, and
    for a paid order (that one is refunded too: :func:`order_cancel_paid`)."""
    order = _order_for_update(order_id)
    if owner_id is not None and order.user_id != owner_id:
        raise OrderNotFound()
    with transaction.atomic(using=order._state.db):
        order = _locked(order)
        _refuse_while_paying(order)
        if order.status != S.PENDING_PAYMENT:
            raise InvalidOrderState(
                f"An order that is {order.status.replace('_', ' ')} cannot be cancelled here.",
                extra={"status": order.status},
            )
        _transition(order, S.CANCELLED, actor=actor, reason=reason or "cancelled")
        if on_cancelled is not None:
            on_cancelled(order)
    _release_quietly(order.id)
    return order


def order_cancel_paid(
    *,
    order_id: int,
    actor: str,
    reason: str,
    in_transaction: Callable[[Order], None],
    owner_id: int | None = None,
) -> Order:
    """Cancel a paid order before its fulfilment starts (it is still `paid`, not yet
    `processing`), and put its units back on sale.

    In one transaction on the order's shard: the order is locked, moved `paid → cancelled` (a
    conditional UPDATE, so the processing task, which moves it `paid → processing`, and this
    cancel cannot both win), whatever fulfilment had already done is undone (lines no longer
    allocated, loyalty points withdrawn; the steps check the status under the same lock, so
    none lands afterwards), ``in_transaction(order)`` runs (the caller records the refund
    there: a cancelled paid order never exists without it) and the stock return is queued
    through the outbox. After the commit the stock goes back at once; if that fails the queued
    task does it. Raises OrderNotFound (others' orders with ``owner_id``) or InvalidOrderState
    (not `paid`)."""
    order = _order_for_update(order_id)
    if owner_id is not None and order.user_id != owner_id:
        raise OrderNotFound()
    alias = order._state.db
    with transaction.atomic(using=alias):
        order = _locked(order)
        if order.status != S.PAID:
            raise InvalidOrderState(
                f"An order that is {order.status.replace('_', ' ')} cannot be cancelled.",
                extra={"status": order.status},
            )
        _transition(order, S.CANCELLED, actor=actor, reason=reason)
        OrderLine.objects.using(alias).filter(order=order).update(allocated_at=None)
        withdrawn = LoyaltyEntry.objects.using(alias).filter(order=order).delete()[0]
        if withdrawn:
            _event(order, "loyalty_withdrawn", S.CANCELLED, S.CANCELLED, actor=actor,
                   reason="the order was cancelled")  # fmt: skip
        in_transaction(order)
        outbox_enqueue(
            using=alias,
            user_id=order.user_id,
            task=STOCK_RETURN_TASK,
            kwargs={"order_id": str(order.id)},
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
        )
    _return_quietly(order.id)
    return order


def order_stock_return(*, order_id: int) -> int:
    """Put a cancelled order's units back on sale (idempotent: 0 the second time). Refused
    (InvalidOrderState) for an order that is not cancelled: its units are the buyer's."""
    order = _order_for_update(order_id)
    if order.status != S.CANCELLED:
        raise InvalidOrderState(
            f"The units of an order that is {order.status.replace('_', ' ')} stay sold.",
            extra={"status": order.status},
        )
    return stock_return(order_id=order.id)


def _return_quietly(order_id: int) -> None:
    try:
        stock_return(order_id=order_id)
    except DatabaseError:
        # The outbox task queued with the cancel returns them.
        logger.exception("could not return the stock of cancelled order %s yet", order_id)


def order_expire(*, order_id: int) -> bool:
    """Expire an unpaid order past its expiry and release its stock. False if it is not due
    (paid, cancelled, or not yet expired)."""
    order = _order_for_update(order_id)
    if order.status != S.PENDING_PAYMENT or order.expires_at > timezone.now():
        return False
    try:
        with transaction.atomic(using=order._state.db):
            order = _locked(order)
            if order.payment_started_at is not None:
                return False  # the payment's outcome decides; the TCC recovery settles it
            _transition(order, S.EXPIRED, actor=SYSTEM, reason="not paid in time")
    except InvalidOrderState:
        return False  # paid or cancelled at the same moment
    _release_quietly(order.id)
    return True


def order_mark_paid(
    *,
    order_id: int,
    actor: str,
    reason: str = "payment captured",
    commit_stock: bool = True,
) -> Order:
    """An unpaid order is paid: commit its stock and queue its processing (outbox), one
    transaction on its shard. Raises InvalidOrderState unless it is `pending_payment`. The
    stock is committed right after; if that fails the expiry sweep commits it (never releases
    it). A payment's confirm writes the same rows in its own statement: :func:`order_paid_writes`.
    """
    order = _order_for_update(order_id)
    with transaction.atomic(using=order._state.db):
        rows_write(order._state.db, order_paid_writes(order=order, actor=actor, reason=reason))
    if commit_stock:
        order_stock_commit(order_id=order.id)
    return order


def order_paid_writes(
    *,
    order: Order,
    actor: str,
    reason: str = "payment captured",
    also_write: Callable[[Order], Sequence[RowWrite]] | None = None,
) -> list[RowWrite]:
    """The rows that mark ``order`` paid (``shop.rowwrites``, inside the caller's transaction
    on its shard): the conditional move `pending_payment → paid` and its event (InvalidOrderState
    when it is no longer unpaid), the caller's rows (``also_write(order)``: the payment marked
    succeeded) and the outbox message that queues the order's processing. The caller commits
    the stock after its transaction (:func:`order_stock_commit`)."""
    alias = order._state.db
    paid = _transition_writes(
        order, S.PAID, actor=actor, reason=reason, paid_at=timezone.now(), payment_started_at=None
    )
    return [
        *paid,
        *(also_write(order) if also_write is not None else ()),
        outbox_write(
            using=alias,
            user_id=order.user_id,
            task=PROCESS_TASK,
            kwargs={"order_id": str(order.id), "attempt": 1},
            queue=settings.ORDER_PROCESSING_QUEUE,
        ),
    ]


def order_stock_commit(*, order_id: int) -> None:
    """Commit a paid order's stock; on failure the expiry sweep finishes it."""
    try:
        stock_commit(order_id=order_id)
    except DatabaseError:
        logger.exception("stock of paid order %s not committed yet; the sweep will", order_id)
    except ReservationReleased:
        # The buyer cancelled the paid order before its commit landed: the units are back
        # on sale, as they should be.
        logger.info("order %s was cancelled before its stock was committed", order_id)


def order_record_refund(*, order: Order, fully: bool, actor: str, reason: str) -> None:
    """Money went back to the buyer (inside the caller's transaction on the order's shard).
    A cancelled order stays cancelled (its refund was part of the cancel): the refund is only
    noted in its history."""
    if order.status == S.CANCELLED:
        _event(order, "refunded", S.CANCELLED, S.CANCELLED, actor=actor, reason=reason)
        return
    _transition(order, S.REFUNDED if fully else S.PARTIALLY_REFUNDED, actor=actor, reason=reason)


def order_event_record(
    *, order: Order, kind: str, actor: str, reason: str = "", data: dict[str, Any] | None = None
) -> None:
    """Note something that happened to an order without changing its status (inside the
    caller's transaction on the order's shard), e.g. a refund requested or declined."""
    _event(order, kind, order.status, order.status, actor=actor, reason=reason, data=data)


def order_lock(*, order_id: int, owner_id: int | None = None) -> Order:
    """The order's row, locked until the caller's transaction on its shard ends (the caller
    opens it on ``shard_for_id(order_id)``). Raises OrderNotFound (also for others' orders
    with ``owner_id``)."""
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    queryset = Order.objects.using(shard_for_id(order_id)).select_for_update().filter(id=order_id)
    if owner_id is not None:
        queryset = queryset.filter(user_id=owner_id)
    order = queryset.first()
    if order is None:
        raise OrderNotFound()
    return order


def order_mark_fulfilled(*, order_id: int, actor: str) -> Order:
    order = _order_for_update(order_id)
    with transaction.atomic(using=order._state.db):
        return _transition(order, S.FULFILLED, actor=actor, reason="shipped")


# --- Expiry sweep -----------------------------------------------------------------------------


@dataclass
class SweepResult:
    expired: int = 0
    released_orphans: int = 0
    committed: int = 0
    unreachable: list[str] = field(default_factory=list)


def orders_expire_sweep(*, limit: int = 500) -> SweepResult:
    """Expire unpaid orders past their expiry on every shard; release stock held for orders
    that were never written (:func:`reservations_orphaned`, ORPHAN_RESERVATION_GRACE after
    the hold); and repair reservations left held by a crash past their expiry: released if
    their order expired or was cancelled, committed if it was paid. A shard that does not
    answer is skipped (logged, counted, alerted: ``shards_each``); the others proceed."""
    result = SweepResult()
    now = timezone.now()

    def expire_shard(alias: str) -> int:
        due = list(
            Order.objects.using(alias)
            .filter(status=S.PENDING_PAYMENT, expires_at__lte=now)
            .order_by("expires_at")
            .values_list("id", flat=True)[:limit]
        )
        return sum(order_expire(order_id=order_id) for order_id in due)

    expired = shards_each("orders_expire_sweep", expire_shard)
    result.expired = sum(expired.values())
    result.unreachable = [alias for alias in order_shard_aliases() if alias not in expired]

    for order_id in reservations_orphaned(
        held_before=orphan_cutoff(), loop="orders_expire_sweep", limit=limit
    ):
        result.released_orphans += bool(stock_release(order_id=order_id))

    grace = timedelta(seconds=settings.ORPHAN_RESERVATION_GRACE)
    by_shard: dict[str, list[int]] = {}
    for order_id in reservations_held_expired(before=now - grace, limit=limit):
        by_shard.setdefault(shard_for_id(order_id), []).append(order_id)

    def repair_shard(alias: str) -> None:
        for order_id in by_shard[alias]:
            order = Order.objects.using(alias).filter(id=order_id).first()
            if order is None:
                continue  # an orphan: released above once its order is shown absent
            if order.status in (S.CANCELLED, S.EXPIRED):
                result.released_orphans += bool(stock_release(order_id=order_id))
            elif order.status == S.PENDING_PAYMENT:
                result.expired += order_expire(order_id=order_id)
            else:
                with contextlib.suppress(ReservationReleased):
                    result.committed += bool(stock_commit(order_id=order_id))

    shards_each("orders_expire_sweep", repair_shard, aliases=[a for a in by_shard if a in expired])
    return result


# --- Fulfilment ---------------------------------------------------------------------------------

FULFILMENT_STEPS = ("allocation", "buyer_email", "loyalty_points")


def _step_done(order: Order, step: str) -> bool:
    return FulfilmentStep.objects.using(order._state.db).filter(order=order, step=step).exists()


class _NoLongerPaid(Exception):
    """The order left `paid` (the buyer cancelled it) while its fulfilment was running."""


@contextlib.contextmanager
def _step(order: Order, step: str) -> Any:
    """One fulfilment step's transaction: the order's row is locked first and must still be
    `paid` (a buyer's cancel takes the same lock, so no step lands after it), then the
    step's effect, then its record."""
    with transaction.atomic(using=order._state.db):
        if _locked(order).status != S.PAID:
            raise _NoLongerPaid()
        yield
        FulfilmentStep.objects.using(order._state.db).create(
            order=order, user_id=order.user_id, step=step
        )


def _allocate(order: Order) -> None:
    """Every line's units must be committed stock before the warehouse may pick them."""
    states = reservation_states([order.id]).get(order.id, set())
    if states == {"held"}:
        stock_commit(order_id=order.id)  # the payment's commit did not land; finish it
    elif states != {"committed"}:
        raise FulfilmentFailed(
            f"order {order.id} has no committed stock to allocate (reservations: "
            f"{sorted(states) or 'none'})"
        )
    with _step(order, "allocation"):
        OrderLine.objects.using(order._state.db).filter(order=order).update(
            allocated_at=timezone.now()
        )


def _email_buyer(order: Order) -> None:
    user = get_user_model().objects.filter(id=order.user_id).first()
    if user is not None and user.email:
        lines = OrderLine.objects.using(order._state.db).filter(order=order)
        body = "\n".join(f"  {line.quantity} × {line.name}" for line in lines)
        send_mail(
            subject=f"Your order {order.id} is being prepared",
            message=f"Thank you! We are preparing:\n{body}\n",
            from_email=None,
            recipient_list=[user.email],
        )
    # Recorded after sending: a crash in between sends the e-mail twice, never zero times.
    with _step(order, "buyer_email"):
        pass


def _credit_points(order: Order) -> None:
    points = order.total // settings.LOYALTY_MINOR_UNITS_PER_POINT
    with _step(order, "loyalty_points"):
        LoyaltyEntry.objects.using(order._state.db).create(
            user_id=order.user_id, order=order, points=points
        )


_STEP_ACTIONS: dict[str, Callable[[Order], None]] = {
    "allocation": _allocate,
    "buyer_email": _email_buyer,
    "loyalty_points": _credit_points,
}


def order_fulfilment_run(*, order_id: int) -> bool:
    """Run the fulfilment steps of a paid order, each at most once, then mark it
    `processing`. Idempotent: a redelivered task skips what is done. Returns False when the
    order needs nothing (not paid, or already processed)."""
    order = _order_for_update(order_id)
    if order.status != S.PAID:
        return False
    try:
        for step in FULFILMENT_STEPS:
            if not _step_done(order, step):
                _STEP_ACTIONS[step](order)
    except (_NoLongerPaid, FulfilmentFailed, ReservationReleased):
        # Cancelled by the buyer meanwhile (its stock already back on sale): nothing to do.
        if Order.objects.using(order._state.db).filter(id=order.id, status=S.PAID).exists():
            raise
        logger.info("order %s left paid during its fulfilment; stopped", order.id)
        return False
    with transaction.atomic(using=order._state.db):
        try:
            _transition(order, S.PROCESSING, actor=SYSTEM, reason="fulfilment steps done")
        except InvalidOrderState:
            return False  # refunded meanwhile, or another delivery finished first
    return True


def order_processing_failed(*, order_id: int, error: str, attempt: int) -> None:
    """Send a failed processing attempt to the dead-letter queue (through the outbox, so the
    dead letter itself cannot be lost) and note it on the order."""
    order = _order_for_update(order_id)
    DEAD_LETTERS.labels(settings.ORDER_PROCESSING_DLQ).inc()
    with transaction.atomic(using=order._state.db):
        _event(
            order,
            "processing_failed",
            order.status,
            order.status,
            actor=SYSTEM,
            reason=error,
            data={"attempt": attempt},
        )
        outbox_enqueue(
            using=order._state.db,
            user_id=order.user_id,
            task=DEAD_LETTER_TASK,
            kwargs={"order_id": str(order.id), "error": error[:2000], "attempt": attempt},
            queue=settings.ORDER_PROCESSING_DLQ,
        )


def order_dead_letter_handle(
    *, order_id: int, error: str, attempt: int, message_id: str | None
) -> str:
    """Alert operators, then re-queue after DEAD_LETTER_RETRY_DELAY seconds up to
    ORDER_PROCESSING_MAX_RETRIES times, then file a manual-review item. Returns what it did.
    A redelivered dead letter has no second effect."""
    order = _order_for_update(order_id)
    alias = order._state.db
    final = attempt > settings.ORDER_PROCESSING_MAX_RETRIES
    if final:
        # Filed first and idempotent (one open item per order), so a crash before the
        # consumption record below cannot lose it and a redelivery cannot double it.
        review_file(
            kind="order_processing",
            reference=str(order.id),
            summary=f"Order {order.id} failed processing {attempt} times: {error[:200]}",
            details={"error": error, "attempts": attempt, "shard": alias},
        )
    with transaction.atomic(using=alias):
        if not consume_once(
            using=alias, user_id=order.user_id, consumer="order_dead_letter", message_id=message_id
        ):
            return "duplicate"
        if not final:
            outbox_enqueue(
                using=alias,
                user_id=order.user_id,
                task=PROCESS_TASK,
                kwargs={"order_id": str(order.id), "attempt": attempt + 1},
                queue=settings.ORDER_PROCESSING_QUEUE,
                countdown=settings.DEAD_LETTER_RETRY_DELAY,
            )
        _event(
            order,
            "manual_review" if final else "processing_retry_scheduled",
            order.status,
            order.status,
            actor=SYSTEM,
            reason=error,
            data={"attempt": attempt},
        )
        transaction.on_commit(lambda: _alert_dead_letter(order, error, attempt, final), using=alias)
    return "manual_review" if final else "requeued"


def _alert_dead_letter(order: Order, error: str, attempt: int, final: bool) -> None:
    """One alert per dead-lettered task (not per order): a broken dependency failing every
    order pages once per window, each order still gets its own manual-review item."""
    what = "sent to manual review" if final else "will be retried"
    logger.error(
        "dead letter: order %s processing attempt %s failed (%s); %s",
        order.id,
        attempt,
        error,
        what,
    )
    alert_raise(
        kind="dead_letter",
        key=PROCESS_TASK,
        severity="critical" if final else "warning",
        subject=f"Order processing failed: order {order.id}, attempt {attempt}; it {what}",
        body=(
            f"Order {order.id} (shard {order._state.db}) failed processing, attempt {attempt} "
            f"of {settings.ORDER_PROCESSING_MAX_RETRIES + 1}: {error}\nIt {what}"
            + (
                " (Platform → Manual review items)."
                if final
                else f", in {settings.DEAD_LETTER_RETRY_DELAY} s."
            )
        ),
    )


def order_processing_retry(*, order_id: int, actor: str) -> None:
    """Operators: queue a processing attempt now (e.g. from the manual-review queue)."""
    order = _order_for_update(order_id)
    with transaction.atomic(using=order._state.db):
        _event(order, "processing_retry_requested", order.status, order.status, actor=actor)
        outbox_enqueue(
            using=order._state.db,
            user_id=order.user_id,
            task=PROCESS_TASK,
            kwargs={"order_id": str(order.id), "attempt": 1},
            queue=settings.ORDER_PROCESSING_QUEUE,
        )


def order_placed_notify(*, order_id: int, message_id: str | None) -> bool:
    """Tell the buyer their items are reserved and until when (once per message)."""
    order = _order_for_update(order_id)
    alias = order._state.db
    with transaction.atomic(using=alias):
        if not consume_once(
            using=alias,
            user_id=order.user_id,
            consumer="order_placed_notify",
            message_id=message_id,
        ):
            return False
        user = get_user_model().objects.filter(id=order.user_id).first()
        if user is not None and user.email:
            deadline = timezone.localtime(order.expires_at).strftime("%H:%M")
            transaction.on_commit(
                lambda: send_mail(
                    subject=f"Order {order.id}: your items are reserved",
                    message=f"Please pay by {deadline}; after that the items go back on sale.",
                    from_email=None,
                    recipient_list=[user.email],
                    fail_silently=True,
                ),
                using=alias,
            )
    return True


def order_review_retry(*, item: Any, operator: Any) -> None:
    """Manual-review "retry now" for kind `order_processing` (the reference is the order id)."""
    order_processing_retry(order_id=int(item.reference), actor=f"operator:{operator.pk}")
