"""Reads of the flash sales: which SKUs are on sale (cached per process, for the admission
path), the database's view of a sale (the truth its gate is rebuilt from), and the operators'
status."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from apps.flashsales.gate import GateState, GateStats, attempt_id, gate_state, gate_stats
from apps.flashsales.models import FlashSale
from apps.flashsales.soldout import sold_out_refuses
from apps.inventory.selectors import stock_available_now

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


def flash_sold_out(*, sku_id: int, user_id: int, idempotency_key: str) -> bool:
    """Whether this process refuses this attempt by itself: it knows the sale of ``sku_id``
    is sold out (a flag of at most FLASH_SOLD_OUT_TTL seconds, see
    :mod:`apps.flashsales.soldout`) and the gate never admitted this attempt."""
    return sold_out_refuses(sku_id, attempt_id(user_id, idempotency_key))


def flash_quantity(items: Sequence[dict[str, Any]], flash: FlashSku | None) -> int:
    """Units of the flash-sale SKU among ``items`` (0 without one)."""
    return sum(item["quantity"] for item in items if flash and item["sku"] == flash.code)


# --- The database's view of a sale (the truth the gate is rebuilt from) -------------------------


@dataclass(frozen=True)
class Holdings:
    """What buyers hold of a SKU outside the stock table: units per buyer (held orders and
    queued tickets), units in queued tickets, the number of queued tickets, the highest
    arrival seq given out."""

    users: dict[int, int]
    queued_units: int
    queued: int
    seq: int


HoldingsSource = Callable[[int], Holdings]
_holdings_source: list[HoldingsSource] = []


def flash_holdings_source_set(source: HoldingsSource) -> None:
    """Register who knows what buyers hold of a SKU (the orders app, at start-up). Inverted so
    this app never imports the orders app, which calls it."""
    _holdings_source[:] = [source]


def flash_sale_truth(*, sku_id: int) -> dict[str, Any] | None:
    """The gate's counters as the database sees them; None if the SKU is not on sale."""
    if not FlashSale.objects.filter(sku_id=sku_id, active=True).exists():
        return None
    held = _holdings_source[0](sku_id) if _holdings_source else Holdings({}, 0, 0, 0)
    return {
        "remaining": max(0, stock_available_now(sku_id=sku_id) - held.queued_units),
        "users": held.users,
        "queued": held.queued,
        "seq": held.seq,
    }


def flash_sale_gate(*, sku_id: int) -> GateState | None:
    """The sale's gate counters as Redis holds them (None without Redis)."""
    return gate_state(sku_id=sku_id)


def flash_sales_active() -> list[tuple[int, str]]:
    """(sku id, code) of every active flash sale, by SKU id."""
    sales = FlashSale.objects.filter(active=True).order_by("sku_id")
    return list(sales.values_list("sku_id", "sku__code"))


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
