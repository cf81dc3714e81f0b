"""Flash sales and queued checkout (peak shaving).

A checkout for a flash-sale SKU — or any checkout while too many are in flight — is not
placed in the request: the Redis gate (``apps.inventory.gate``) admits it or refuses it at
once, and an admitted one becomes a :class:`CheckoutTicket` on the buyer's shard, queued for a
worker (queue ``checkout``) through the outbox. The worker turns tickets into orders in arrival
order with the same ``order_place`` as the direct path, so the database reservation stays the
truth; each ticket ends `accepted` (with its order) or `rejected` (with a reason), exactly once
— a worker that dies mid-ticket leaves it queued and the broker redelivers it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Sum
from django.utils import timezone
from django_redis import get_redis_connection

from apps.catalog.services import sku_per_user_limit_set
from apps.inventory.exceptions import OutOfStock
from apps.inventory.gate import (
    Admission,
    GateStats,
    GateUnavailable,
    gate_admit,
    gate_give_back,
    gate_idle_since_last_check,
    gate_load,
    gate_state,
    gate_stats,
)
from apps.inventory.models import FlashSale
from apps.inventory.selectors import stock_available_now
from apps.inventory.services import stock_receive
from apps.orders import services
from apps.orders.exceptions import CheckoutInvalid, PurchaseLimitExceeded
from apps.orders.metrics import checkout_observed
from apps.orders.models import CheckoutTicket, Order, OrderLine
from shop.alerts import alert_raise
from shop.cache import CACHE_BACKEND_ERRORS, cache_available
from shop.errors import ServiceUnavailable
from shop.locks import cache_is_redis
from shop.outbox import outbox_enqueue
from shop.sharding import logical_shard_for_user, order_shard_aliases, shard_for_id, shard_for_user
from shop.sharding.ids import id_generate, id_is_plausible
from shop.throttle import hot_sku_check

logger = logging.getLogger(__name__)

TICKET_TASK = "apps.orders.tasks.checkout_ticket_process"
# How long this process trusts its list of flash sales (the admission path must not query
# the database for it).
FLASH_LIST_TTL = 2.0


@dataclass(frozen=True)
class FlashSku:
    sku_id: int
    code: str
    per_user_limit: int | None


class _FlashList:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.loaded_at = float("-inf")
        self.by_code: dict[str, FlashSku] = {}

    def get(self) -> dict[str, FlashSku]:
        if time.monotonic() - self.loaded_at > FLASH_LIST_TTL:
            with self._lock:
                if time.monotonic() - self.loaded_at > FLASH_LIST_TTL:
                    self.by_code = {
                        code: FlashSku(sku_id, code, limit)
                        for sku_id, code, limit in FlashSale.objects.filter(active=True)
                        .select_related("sku")
                        .values_list("sku_id", "sku__code", "sku__per_user_limit")
                    }
                    self.loaded_at = time.monotonic()
        return self.by_code

    def forget(self) -> None:
        self.loaded_at = float("-inf")


flash_list = _FlashList()


def flash_sku_in(items: Sequence[dict[str, Any]]) -> FlashSku | None:
    """The flash-sale SKU among the requested items, if any."""
    on_sale = flash_list.get()
    for item in items:
        if item["sku"] in on_sale:
            return on_sale[item["sku"]]
    return None


# --- The database's view of a sale (the truth the gate is rebuilt from) -------------------------


def flash_sale_truth(*, sku_id: int) -> dict[str, Any] | None:
    sale = FlashSale.objects.filter(sku_id=sku_id, active=True).first()
    if sale is None:
        return None
    queued_units = 0
    users: dict[int, int] = {}
    queued = seq = 0
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
    return {
        "remaining": max(0, stock_available_now(sku_id=sku_id) - queued_units),
        "users": users,
        "queued": queued,
        "seq": seq,
    }


def flash_sale_start(*, sku_code: str, stock: int, per_user_limit: int | None) -> FlashSale:
    """Put ``stock`` more units of a SKU on flash sale (optionally limited per buyer) and load
    its gate from the database."""
    from apps.catalog.models import Sku

    sku = Sku.objects.filter(code=sku_code).first()
    if sku is None:
        raise CheckoutInvalid(f"No SKU {sku_code}.")
    if stock < 0 or (per_user_limit is not None and per_user_limit < 1):
        raise CheckoutInvalid("Stock must be ≥ 0 and the per-user limit ≥ 1.")
    with transaction.atomic(using="default"):
        if stock:
            stock_receive(sku_id=sku.id, quantity=stock)
        sku_per_user_limit_set(sku=sku, per_user_limit=per_user_limit)
        sale, _ = FlashSale.objects.update_or_create(
            sku=sku,
            defaults={"units": stock, "active": True, "ended_at": None},
        )  # fmt: skip
    flash_list.forget()
    truth = flash_sale_truth(sku_id=sku.id)
    try:
        gate_load(sku_id=sku.id, **truth)
    except (GateUnavailable, *CACHE_BACKEND_ERRORS):
        logger.warning("flash sale of %s started without the gate (no Redis)", sku_code)
    return sale


def flash_sale_end(*, sku_id: int) -> None:
    from apps.inventory.gate import gate_clear

    FlashSale.objects.filter(sku_id=sku_id).update(active=False, ended_at=timezone.now())
    flash_list.forget()
    gate_clear(sku_id=sku_id)


def flash_sale_repair(*, sku_id: int) -> bool:
    """Correct the gate from the database when the sale is quiet, so counters that drifted (a
    lost give-back, a crash) heal. Returns True if it changed anything.

    Quiet: no ticket queued in the database, and none in the gate either — or the gate's
    queue count has outlived a whole repair interval without a single admission (same arrival
    seq as the last check), which only a lost give-back explains: an admitted attempt writes
    its ticket within the request. While tickets are in flight the two views legitimately
    differ."""
    state = gate_state(sku_id=sku_id)
    truth = flash_sale_truth(sku_id=sku_id)
    if state is None or truth is None or truth["queued"]:
        return False
    if state.queued and not gate_idle_since_last_check(sku_id=sku_id, seq=state.seq):
        return False
    if (
        not state.queued
        and state.remaining == truth["remaining"]
        and state.users == {k: v for k, v in truth["users"].items() if v > 0}
    ):
        return False
    gate_load(sku_id=sku_id, **{**truth, "seq": max(truth["seq"], state.seq)})
    logger.warning("gate of SKU %s repaired: %s → %s", sku_id, state, truth)
    return True


def flash_sales_repair() -> int:
    return sum(
        flash_sale_repair(sku_id=sale.sku_id) for sale in FlashSale.objects.filter(active=True)
    )


def checkout_queues_watch() -> dict[str, int]:
    """Alert (kind ``checkout_queue``, key = the SKU code) for each active flash sale whose
    checkout queue holds at least ALERT_QUEUE_NEAR_BOUND × CHECKOUT_QUEUE_BOUND tickets, while
    there is still time to act. Returns those SKUs' queue lengths. Reads the gate's counters
    only (without Redis there is no gate and nothing to watch)."""
    bound = settings.CHECKOUT_QUEUE_BOUND
    near = max(1.0, bound * settings.ALERT_QUEUE_NEAR_BOUND)
    crowded = {}
    sales = FlashSale.objects.filter(active=True).order_by("sku_id")
    for sku_id, code in sales.values_list("sku_id", "sku__code"):
        state = gate_state(sku_id=sku_id)
        if state is None or state.queued < near:
            continue
        crowded[code] = state.queued
        alert_raise(
            kind="checkout_queue",
            key=code,
            subject=f"Checkout queue of {code} at {state.queued / bound:.0%} of its bound",
            body=(
                f"{state.queued} checkouts of flash-sale SKU {code} are waiting; at "
                f'{bound} (CHECKOUT_QUEUE_BOUND) buyers get an immediate "try later". '
                f"{state.remaining} units left at the gate. More checkout workers (queue "
                f"{settings.CHECKOUT_QUEUE}) drain it faster."
            ),
        )
    return crowded


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


# --- Admission -----------------------------------------------------------------------------------

GATE_REFUSALS = {
    "sold_out": "out_of_stock",
    "limit": "purchase_limit_exceeded",
    "busy": "queue_full",
}


def flash_quantity(items: Sequence[dict[str, Any]], flash: FlashSku | None) -> int:
    """Units of the flash-sale SKU among ``items`` (0 without one)."""
    return sum(item["quantity"] for item in items if flash and item["sku"] == flash.code)


def flash_pass(
    *, flash: FlashSku, user_id: int, quantity: int, idempotency_key: str
) -> Admission | None:
    """One checkout attempt at the gate, for the API and the storefront alike: the admission
    (``admitted``, or ``replay`` of an attempt admitted before under this key), or the refusal
    raised as the error the buyer sees — OutOfStock, PurchaseLimitExceeded, or
    ServiceUnavailable while the sale's queue is full or its counters are being rebuilt.
    Nothing is written. None when the gate cannot be used (Redis down): take the database
    path."""
    try:
        admission = flash_admit(
            flash=flash, user_id=user_id, quantity=quantity, idempotency_key=idempotency_key
        )
    except GateUnavailable:
        return None
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


class _Hold:
    kept = False

    def keep(self) -> None:
        self.kept = True


@contextlib.contextmanager
def gate_hold(
    admission: Admission | None,
    *,
    flash: FlashSku | None,
    user_id: int,
    quantity: int,
    idempotency_key: str,
) -> Iterator[_Hold]:
    """Hold the units the gate admitted while the ticket is written: unless the block calls
    ``keep()`` (its ticket is written), they go back to the gate and the attempt is forgotten,
    so a retry under the same key is admitted afresh instead of replayed without units."""
    hold = _Hold()
    try:
        yield hold
    finally:
        if admission is not None and admission.outcome == "admitted" and not hold.kept:
            gate_give_back(sku_id=flash.sku_id, user_id=user_id, quantity=quantity,
                           was_queued=True, idempotency_key=idempotency_key)  # fmt: skip


def flash_admit(*, flash: FlashSku, user_id: int, quantity: int, idempotency_key: str) -> Admission:
    """One checkout attempt at a flash sale's gate (the hot-SKU rate limit first). Raises
    RateLimited, or GateUnavailable when Redis cannot be used (take the database path)."""
    hot_sku_check(flash.sku_id)
    admission = gate_admit(
        sku_id=flash.sku_id,
        user_id=user_id,
        quantity=quantity,
        per_user_limit=flash.per_user_limit,
        idempotency_key=idempotency_key,
        truth=functools.partial(flash_sale_truth, sku_id=flash.sku_id),
    )
    if admission.outcome in GATE_REFUSALS:
        checkout_observed("rejected", GATE_REFUSALS[admission.outcome])
    return admission


# --- Tickets --------------------------------------------------------------------------------------


def ticket_create(
    *,
    user_id: int,
    items: Sequence[dict[str, Any]],
    flash: FlashSku | None,
    seq: int,
    on_created: Callable[[CheckoutTicket], None] | None = None,
) -> CheckoutTicket:
    """Queue a checkout: the ticket and its task (outbox) in one transaction on the buyer's
    shard."""
    alias = shard_for_user(user_id)
    quantity = flash_quantity(items, flash)
    with transaction.atomic(using=alias):
        ticket = CheckoutTicket.objects.using(alias).create(
            id=id_generate(alias=alias, logical=logical_shard_for_user(user_id)),
            user_id=user_id,
            items=list(items),
            gate_sku_id=flash.sku_id if flash else None,
            gate_quantity=quantity,
            seq=seq,
        )
        outbox_enqueue(
            using=alias,
            user_id=user_id,
            task=TICKET_TASK,
            kwargs={"ticket_id": str(ticket.id)},
            queue=settings.CHECKOUT_QUEUE,
        )
        if on_created is not None:
            on_created(ticket)
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

    def accept(order: Order) -> None:
        settled = (
            CheckoutTicket.objects.using(alias)
            .filter(id=ticket.id, status=CheckoutTicket.Status.QUEUED)
            .update(status=CheckoutTicket.Status.ACCEPTED, order_id=order.id,
                    updated_at=timezone.now())
        )  # fmt: skip
        if not settled:
            raise TicketDone()

    try:
        services.order_place(user_id=ticket.user_id, items=ticket.items, on_created=accept)
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
        gate_give_back(sku_id=ticket.gate_sku_id, user_id=ticket.user_id, quantity=0,
                       was_queued=True)  # fmt: skip
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
        units = ticket.gate_quantity if units_back else 0
        gate_give_back(sku_id=ticket.gate_sku_id, user_id=ticket.user_id, quantity=units,
                       was_queued=True)  # fmt: skip
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


def ticket_get(*, ticket_id: int, user_id: int) -> CheckoutTicket | None:
    if not id_is_plausible(ticket_id):
        return None
    return (
        CheckoutTicket.objects.using(shard_for_id(ticket_id))
        .filter(id=ticket_id, user_id=user_id)
        .first()
    )


def ticket_position(ticket: CheckoutTicket) -> int | None:
    """Tickets ahead of this one in its gate's line (approximate; None when unknown)."""
    if ticket.status != CheckoutTicket.Status.QUEUED or not ticket.gate_sku_id:
        return None
    state = gate_state(sku_id=ticket.gate_sku_id)
    if state is None:
        return None
    processed = state.seq - state.queued
    return max(0, ticket.seq - processed - 1)


# --- Status for operators -------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashSaleStatus:
    sku_id: int
    code: str
    units: int  # put on sale
    per_user_limit: int | None
    started_at: Any
    units_left: int | None  # what the gate may still admit (None: gate not in Redis)
    queued: int  # tickets admitted and waiting for a worker
    stock_available: int  # the database's truth
    stats: GateStats | None  # how the gate answered


def flash_sales_status() -> list[FlashSaleStatus]:
    """Every active flash sale with its gate and the database's stock (dashboard, metrics)."""
    sales = list(FlashSale.objects.filter(active=True).select_related("sku"))
    result = []
    for sale in sales:
        state = gate_state(sku_id=sale.sku_id)
        result.append(
            FlashSaleStatus(
                sku_id=sale.sku_id,
                code=sale.sku.code,
                units=sale.units,
                per_user_limit=sale.sku.per_user_limit,
                started_at=sale.started_at,
                units_left=state.remaining if state else None,
                queued=state.queued if state else 0,
                stock_available=stock_available_now(sku_id=sale.sku_id),
                stats=gate_stats(sku_id=sale.sku_id),
            )
        )
    return result
