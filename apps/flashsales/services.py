"""Flash sales: start, end and repair a sale, and admit checkout attempts at its gate.

A checkout for a flash-sale SKU is not placed in the request: the Redis gate
(:mod:`apps.flashsales.gate`) admits it or refuses it at once, and an admitted one becomes a
checkout ticket (the orders app's queued checkout) for a worker. The database reservation made
when the ticket is processed stays the truth; the gate only keeps the crowd off the database.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.catalog.selectors import sku_get_by_code
from apps.catalog.services import sku_per_user_limit_set
from apps.flashsales.exceptions import FlashSaleInvalid
from apps.flashsales.gate import (
    Admission,
    GateUnavailable,
    gate_admit,
    gate_clear,
    gate_give_back,
    gate_idle_since_last_check,
    gate_load,
    gate_state,
)
from apps.flashsales.models import FlashSale
from apps.flashsales.selectors import (
    FlashSku,
    flash_list,
    flash_sale_truth,
    flash_sales_active,
    flash_sold_out,
)
from apps.flashsales.soldout import sold_out_set
from apps.inventory.services import stock_receive
from shop.alerts import alert_raise
from shop.cache import CACHE_BACKEND_ERRORS
from shop.throttle import limit_checks, limits_check, rate_limited

logger = logging.getLogger(__name__)

__all__ = [
    "Admission",
    "GateUnavailable",
    "checkout_queues_watch",
    "flash_admit",
    "flash_gate_leave",
    "flash_hold",
    "flash_sale_end",
    "flash_sale_repair",
    "flash_sale_start",
    "flash_sales_repair",
]


def flash_sale_start(*, sku_code: str, stock: int, per_user_limit: int | None) -> FlashSale:
    """Put ``stock`` more units of a SKU on flash sale (optionally limited per buyer) and load
    its gate from the database."""
    sku = sku_get_by_code(sku_code)
    if sku is None:
        raise FlashSaleInvalid(f"No SKU {sku_code}.")
    if stock < 0 or (per_user_limit is not None and per_user_limit < 1):
        raise FlashSaleInvalid("Stock must be ≥ 0 and the per-user limit ≥ 1.")
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
    return sum(flash_sale_repair(sku_id=sku_id) for sku_id, _ in flash_sales_active())


def checkout_queues_watch() -> dict[str, int]:
    """Alert (kind ``checkout_queue``, key = the SKU code) for each active flash sale whose
    checkout queue holds at least ALERT_QUEUE_NEAR_BOUND × CHECKOUT_QUEUE_BOUND tickets, while
    there is still time to act. Returns those SKUs' queue lengths. Reads the gate's counters
    only (without Redis there is no gate and nothing to watch)."""
    bound = settings.CHECKOUT_QUEUE_BOUND
    near = max(1.0, bound * settings.ALERT_QUEUE_NEAR_BOUND)
    crowded = {}
    for sku_id, code in flash_sales_active():
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


# --- Admission -----------------------------------------------------------------------------------


def flash_admit(
    *,
    flash: FlashSku,
    user_id: int,
    quantity: int,
    idempotency_key: str,
    limits: Sequence[tuple[str, str]] = (),
) -> Admission:
    """One checkout attempt at a flash sale's gate: ``admitted`` (units taken, a place in
    line), ``replay`` (admitted before under this key), or a refusal — ``sold_out``, ``limit``,
    ``busy`` (queue full, or the counters being rebuilt). Nothing is written to the database.

    The rate limits — ``limits`` ((layer, key) pairs the caller was left to check, see
    shop.throttle.LIMITS_IN_VIEW) and the SKU's ``hot_sku`` — are checked first in the same
    Redis call. Raises RateLimited, or GateUnavailable when Redis cannot be used (the limits
    then checked as usual, per process: take the database path).

    Once the gate has answered "sold out" with nothing left, this process answers ``sold_out``
    by itself for up to FLASH_SOLD_OUT_TTL seconds (:mod:`apps.flashsales.soldout`)."""
    if flash_sold_out(sku_id=flash.sku_id, user_id=user_id, idempotency_key=idempotency_key):
        return Admission("sold_out")
    layers = [*limits, ("hot_sku", str(flash.sku_id))]
    try:
        admission = gate_admit(
            sku_id=flash.sku_id,
            user_id=user_id,
            quantity=quantity,
            per_user_limit=flash.per_user_limit,
            idempotency_key=idempotency_key,
            truth=functools.partial(flash_sale_truth, sku_id=flash.sku_id),
            limits=limit_checks(layers),
        )
    except GateUnavailable:
        limits_check(layers)
        raise
    if admission.outcome == "rate_limited":
        raise rate_limited(admission.retry_after, layer=admission.layer)
    if admission.admitted is not None:  # nothing left, and the admitted attempts listed
        sold_out_set(flash.sku_id, admission.admitted)
    return admission


class _Hold:
    kept = False

    def keep(self) -> None:
        self.kept = True


@contextlib.contextmanager
def flash_hold(
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


def flash_gate_leave(*, sku_id: int, user_id: int, units_back: int) -> None:
    """A queued ticket of this sale is settled: it leaves the gate's queue, giving back
    ``units_back`` units (0 when they became an order or the database had none)."""
    gate_give_back(sku_id=sku_id, user_id=user_id, quantity=units_back, was_queued=True)
