"""Checkout: one service for the API and the storefront, and the queued checkouts (tickets).

``checkout_submit`` takes a buyer's items and idempotency key and ends in an order (placed in
the request), a ticket (queued for a worker: a flash-sale SKU admitted by its gate, or any
checkout while too many are in flight), a replay of what that key got before, or a ShopError.
The order of the steps is the contract: the flash sale's gate first (a refusal there writes
nothing and touches no database), then the idempotency claim on the buyer's shard, then the
order or the ticket, written in one transaction with the claim's stored response.

A ticket is turned into an order by a worker (queue ``checkout``, through the outbox) with the
same ``order_place`` as the direct path, so the database reservation stays the truth; each
ticket ends `accepted` (with its order) or `rejected` (with a reason), exactly once — a worker
that dies mid-ticket leaves it queued and the broker redelivers it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.models import Max, Sum
from django.utils import timezone
from django_redis import get_redis_connection

from apps.flashsales.selectors import (
    FlashSku,
    Holdings,
    flash_quantity,
    flash_sku_in,
    flash_sold_out,
)
from apps.flashsales.services import (
    Admission,
    GateUnavailable,
    flash_admit,
    flash_gate_leave,
    flash_hold,
)
from apps.inventory.exceptions import OutOfStock
from apps.orders import services
from apps.orders.exceptions import CheckoutInvalid, PurchaseLimitExceeded
from apps.orders.metrics import checkout_observed
from apps.orders.models import CheckoutTicket, Order, OrderLine
from shop.cache import CACHE_BACKEND_ERRORS, cache_available
from shop.errors import ServiceUnavailable, ShopError
from shop.idempotency import IdempotencyClaim, Replay, idempotency_claimed
from shop.locks import cache_is_redis
from shop.outbox import outbox_write
from shop.rowwrites import RowWrite, insert_sql, inserted, rows_write, update_sql
from shop.sharding import logical_shard_for_user, order_shard_aliases, shard_for_id, shard_for_user
from shop.sharding.ids import id_generate
from shop.throttle import limits_check

logger = logging.getLogger(__name__)

TICKET_TASK = "apps.orders.tasks.checkout_ticket_process"


# --- The one checkout ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutOutcome:
    """What a checkout got: 201 (an order placed) or 202 (a ticket queued), with the body
    stored for replay; ``replayed`` when the key had it already."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def checkout_submit(
    *,
    user_id: int,
    items: list[dict[str, Any]],
    key: str,
    fingerprint: str,
    order_body: Callable[[Order], dict[str, Any]],
    ticket_body: Callable[[CheckoutTicket], dict[str, Any]],
    remember_refusals: bool,
    limits: Sequence[tuple[str, str]] = (),
) -> CheckoutOutcome:
    """Check out ``items`` for ``user_id`` under the idempotency ``key`` (already validated;
    ``fingerprint`` identifies the request, a different one under the same key is refused).

    ``order_body`` / ``ticket_body`` give the response body stored with the key, inside the
    transaction that writes the order or the ticket. With ``remember_refusals`` a domain
    refusal raised after the claim (out of stock, a limit) is stored and replayed for the key;
    without it the key is let go. Raises the refusal as a ShopError: OutOfStock,
    PurchaseLimitExceeded, RateLimited, ServiceUnavailable (the sale's queue full),
    IdempotencyMismatch, IdempotencyConflict, CheckoutInvalid.

    ``limits``: the request's rate-limit layers the middleware left to this service
    (shop.throttle.LIMITS_IN_VIEW): checked with the gate in one call, or first thing."""
    flash = flash_sku_in(items)
    if flash is None and limits:
        limits_check(list(limits))
    if flash is not None:
        admission = _flash_pass(flash=flash, user_id=user_id, items=items, key=key,
                                limits=limits)  # fmt: skip
        if admission is not None:
            return _queued(user_id=user_id, items=items, key=key, fingerprint=fingerprint,
                           flash=flash, admission=admission, ticket_body=ticket_body,
                           remember_refusals=remember_refusals)  # fmt: skip
        # The gate cannot be used (Redis down): the database decides, on the direct path.
        return _direct(user_id=user_id, items=items, key=key, fingerprint=fingerprint,
                       order_body=order_body, remember_refusals=remember_refusals)  # fmt: skip
    with checkout_in_flight() as load:
        if load.busy:
            return _queued(user_id=user_id, items=items, key=key, fingerprint=fingerprint,
                           flash=None, admission=None, ticket_body=ticket_body,
                           remember_refusals=remember_refusals)  # fmt: skip
        return _direct(user_id=user_id, items=items, key=key, fingerprint=fingerprint,
                       order_body=order_body, remember_refusals=remember_refusals)  # fmt: skip


def checkout_refused_locally(
    *, user_id: int, items: Sequence[dict[str, Any]], key: str
) -> ShopError | None:
    """The refusal this process can give this attempt by itself — a flash sale it knows is
    sold out, and an attempt its gate never admitted — or None. Touches nothing remote (the
    sale list is this process's; it is re-read from the database every FLASH_LIST_TTL)."""
    flash = flash_sku_in(items)
    if flash is None or not flash_sold_out(
        sku_id=flash.sku_id, user_id=user_id, idempotency_key=key
    ):
        return None
    checkout_observed("rejected", "out_of_stock")
    return OutOfStock(extra={"sku": flash.code})


GATE_REFUSALS = {
    "sold_out": "out_of_stock",
    "limit": "purchase_limit_exceeded",
    "busy": "queue_full",
}


def _flash_pass(
    *,
    flash: FlashSku,
    user_id: int,
    items: Sequence[dict[str, Any]],
    key: str,
    limits: Sequence[tuple[str, str]],
) -> Admission | None:
    """The attempt at the sale's gate: the admission (``admitted``, or ``replay`` of one
    admitted before under this key), or the refusal raised as the error the buyer sees. None
    when the gate cannot be used."""
    try:
        admission = flash_admit(
            flash=flash,
            user_id=user_id,
            quantity=flash_quantity(items, flash),
            idempotency_key=key,
            limits=limits,
        )
    except GateUnavailable:
        return None
    if admission.outcome in GATE_REFUSALS:
        checkout_observed("rejected", GATE_REFUSALS[admission.outcome])
    if admission.outcome == "sold_out":
        raise OutOfStock(extra={"sku": flash.code})
    if admission.outcome == "limit":
        raise PurchaseLimitExceeded(
            f"At most {flash.per_user_limit} per buyer.",
            extra={"sku": flash.code, "limit": flash.per_user_limit},
        )
    if admission.outcome == "busy":
        raise ServiceUnavailable("The queue for this sale is full; try again shortly.")
    return admission


def _claimed(
    *, user_id: int, key: str, fingerprint: str, remember_refusals: bool
) -> contextlib.AbstractContextManager[IdempotencyClaim | Replay]:
    """The key's claim on the buyer's shard (or its Replay), settled by the kernel
    (``shop.idempotency.idempotency_claimed``)."""
    return idempotency_claimed(
        using=shard_for_user(user_id), user_id=user_id, key=key, fingerprint=fingerprint,
        remember_refusals=remember_refusals,
    )  # fmt: skip


def _direct(
    *,
    user_id: int,
    items: list[dict[str, Any]],
    key: str,
    fingerprint: str,
    order_body: Callable[[Order], dict[str, Any]],
    remember_refusals: bool,
) -> CheckoutOutcome:
    with _claimed(user_id=user_id, key=key, fingerprint=fingerprint,
                  remember_refusals=remember_refusals) as claim:  # fmt: skip
        if isinstance(claim, Replay):
            return CheckoutOutcome(claim.status, claim.body or {}, replayed=True)
        body: dict[str, Any] = {}

        def record(order: Order) -> list[RowWrite]:  # written with the order
            body.update(order_body(order))
            return [claim.completion(status=201, body=body)]

        services.order_place(user_id=user_id, items=items, also_write=record)
        return CheckoutOutcome(201, body)


def _queued(
    *,
    user_id: int,
    items: list[dict[str, Any]],
    key: str,
    fingerprint: str,
    flash: FlashSku | None,
    admission: Admission | None,
    ticket_body: Callable[[CheckoutTicket], dict[str, Any]],
    remember_refusals: bool,
) -> CheckoutOutcome:
    with (
        flash_hold(admission, flash=flash, user_id=user_id,
                   quantity=flash_quantity(items, flash), idempotency_key=key) as hold,
        _claimed(user_id=user_id, key=key, fingerprint=fingerprint,
                 remember_refusals=remember_refusals) as claim,
    ):  # fmt: skip
        if isinstance(claim, Replay):  # admitted twice: the first ticket stands
            return CheckoutOutcome(claim.status, claim.body or {}, replayed=True)
        body: dict[str, Any] = {}

        def record(ticket: CheckoutTicket) -> list[RowWrite]:  # written with the ticket
            body.update(ticket_body(ticket))
            return [claim.completion(status=202, body=body)]

        ticket_create(user_id=user_id, items=items, flash=flash,
                      seq=admission.seq if admission else 0, also_write=record)  # fmt: skip
        hold.keep()
        return CheckoutOutcome(202, body)


# --- Load-based queueing --------------------------------------------------------------------------


# A checkout counts as in flight for at most this long: a request whose process was killed
# before it could say it finished stops counting then (gunicorn kills a request at WEB_TIMEOUT,
# 30 s by default), instead of raising the count for good.
IN_FLIGHT_HORIZON = 60.0


class checkout_in_flight:
    """Counts checkouts in flight across processes (a Redis sorted set of the requests by start
    time); ``busy`` says whether this one should be queued. Without Redis it never queues."""

    key = "checkout:in-flight"

    def __enter__(self) -> checkout_in_flight:
        self.counted = False
        self.busy = False
        if not cache_is_redis() or not cache_available():
            return self
        try:
            from django.core.cache import cache

            self.full_key = cache.make_key(self.key)
            self.token = secrets.token_hex(8)
            now = time.time()
            pipe = get_redis_connection("default").pipeline()
            pipe.zremrangebyscore(self.full_key, "-inf", now - IN_FLIGHT_HORIZON)
            pipe.zadd(self.full_key, {self.token: now})
            pipe.zcard(self.full_key)
            pipe.expire(self.full_key, int(IN_FLIGHT_HORIZON))
            _, _, in_flight, _ = pipe.execute()
            self.counted = True
            self.busy = in_flight > settings.CHECKOUT_QUEUE_ABOVE_INFLIGHT
        except CACHE_BACKEND_ERRORS:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        if self.counted:
            with contextlib.suppress(*CACHE_BACKEND_ERRORS):
                get_redis_connection("default").zrem(self.full_key, self.token)


# --- Tickets --------------------------------------------------------------------------------------


def ticket_create(
    *,
    user_id: int,
    items: Sequence[dict[str, Any]],
    flash: FlashSku | None,
    seq: int,
    also_write: Callable[[CheckoutTicket], Sequence[RowWrite]] | None = None,
) -> CheckoutTicket:
    """Queue a checkout: the ticket, its task (outbox) and the caller's rows
    (``also_write(ticket)``: the idempotency key's stored response) in one transaction on the
    buyer's shard, on PostgreSQL in one statement."""
    alias = shard_for_user(user_id)
    now = timezone.now()
    ticket = CheckoutTicket(
        id=id_generate(alias=alias, logical=logical_shard_for_user(user_id)),
        user_id=user_id,
        items=list(items),
        gate_sku_id=flash.sku_id if flash else None,
        gate_quantity=flash_quantity(items, flash),
        seq=seq,
        created_at=now,
        updated_at=now,
    )
    with transaction.atomic(using=alias):
        rows_write(alias, [
            RowWrite(*insert_sql(connections[alias], [ticket])),
            outbox_write(using=alias, user_id=user_id, task=TICKET_TASK,
                         kwargs={"ticket_id": str(ticket.id)}, queue=settings.CHECKOUT_QUEUE),
            *(also_write(ticket) if also_write is not None else ()),
        ])  # fmt: skip
        inserted(ticket, using=alias)
    checkout_observed("queued")
    return ticket


class TicketDone(Exception):
    """The ticket was settled by another delivery meanwhile."""


# Refusals that end a ticket; anything else (an outage) leaves it queued for a retry.
REJECTIONS = (OutOfStock, PurchaseLimitExceeded, CheckoutInvalid)


def ticket_process(*, ticket_id: int) -> str:
    """Turn a queued ticket into an order, or reject it with the reason. Exactly once: the
    ticket is settled in the order's own transaction, so a redelivered or concurrent task
    cannot place a second order. Returns the ticket's status."""
    alias = shard_for_id(ticket_id)
    ticket = CheckoutTicket.objects.using(alias).get(id=ticket_id)
    if ticket.status != CheckoutTicket.Status.QUEUED:
        return ticket.status

    def settled(values: list[Any]) -> None:
        if not values:
            raise TicketDone()

    def accept(order: Order) -> list[RowWrite]:  # written with the order
        sql, params = update_sql(
            connections[alias],
            CheckoutTicket,
            {"status": CheckoutTicket.Status.ACCEPTED, "order_id": order.id,
             "updated_at": timezone.now()},
            {"id": ticket.id, "status": CheckoutTicket.Status.QUEUED},
        )  # fmt: skip
        return [RowWrite(sql, params, done=settled)]

    try:
        services.order_place(user_id=ticket.user_id, items=ticket.items, also_write=accept)
    except TicketDone:
        return CheckoutTicket.objects.using(alias).get(id=ticket.id).status
    except REJECTIONS as exc:
        # The gate's SKU sold out in the database: the gate was merely optimistic, give
        # nothing back. Any other refusal (another item sold out, a limit, an invalid cart):
        # the gate's units were never the problem, return them.
        gate_sold_out = (
            isinstance(exc, OutOfStock) and exc.extra.get("sku_id") == ticket.gate_sku_id
        )
        ticket_reject(ticket, code=exc.code, detail=exc.message, units_back=not gate_sold_out)
        return CheckoutTicket.Status.REJECTED
    if ticket.gate_sku_id:
        flash_gate_leave(sku_id=ticket.gate_sku_id, user_id=ticket.user_id, units_back=0)
    return CheckoutTicket.Status.ACCEPTED


def ticket_reject(ticket: CheckoutTicket, *, code: str, detail: str, units_back: bool) -> bool:
    """End a queued ticket as rejected with its reason and leave the gate's queue (returning
    its units when ``units_back``). False if it was settled meanwhile."""
    rejected = (
        CheckoutTicket.objects.using(shard_for_id(ticket.id))
        .filter(id=ticket.id, status=CheckoutTicket.Status.QUEUED)
        .update(status=CheckoutTicket.Status.REJECTED, reject_code=code,
                reject_detail=detail[:300], updated_at=timezone.now())
    )  # fmt: skip
    if rejected and ticket.gate_sku_id:
        flash_gate_leave(sku_id=ticket.gate_sku_id, user_id=ticket.user_id,
                         units_back=ticket.gate_quantity if units_back else 0)  # fmt: skip
    return bool(rejected)


def ticket_fail(*, ticket_id: int, error: BaseException) -> bool:
    """End a ticket its task could not process (an unexpected error, retried and still
    failing) as rejected with ``internal_error``: every ticket ends, none stays queued."""
    ticket = CheckoutTicket.objects.using(shard_for_id(ticket_id)).get(id=ticket_id)
    logger.error("checkout ticket %s rejected after an unexpected error: %r", ticket_id, error)
    return ticket_reject(
        ticket,
        code="internal_error",
        detail="We could not complete this checkout; nothing was reserved or charged.",
        units_back=True,
    )


def flash_sale_holdings(sku_id: int) -> Holdings:
    """What buyers hold of a flash-sale SKU in the order shards: queued tickets and orders
    holding units (the flash-sale app rebuilds its gate from this; registered at start-up)."""
    queued_units = queued = seq = 0
    users: dict[int, int] = {}
    for alias in order_shard_aliases():
        tickets = CheckoutTicket.objects.using(alias).filter(gate_sku_id=sku_id)
        for user_id, units in (
            tickets.filter(status=CheckoutTicket.Status.QUEUED)
            .values_list("user_id")
            .annotate(units=Sum("gate_quantity"))
        ):
            users[user_id] = users.get(user_id, 0) + units
            queued_units += units
        queued += tickets.filter(status=CheckoutTicket.Status.QUEUED).count()
        seq = max(seq, tickets.aggregate(top=Max("seq"))["top"] or 0)
        for user_id, units in (
            OrderLine.objects.using(alias)
            .filter(sku_id=sku_id, order__status__in=services.HOLDING_STATUSES)
            .values_list("user_id")
            .annotate(units=Sum("quantity"))
        ):
            users[user_id] = users.get(user_id, 0) + units
    return Holdings(users=users, queued_units=queued_units, queued=queued, seq=seq)
