"""Game-day drills: the chaos experiments of the test suite, as an operator's rehearsal against
a staging stack (``python manage.py drill <scenario>``; docs/game-day.md).

Each scenario sets up what it needs, injects one fault (a bank's outage or lost answers through
the sandbox acquirer's fault API, a breaker forced open, the ``read_only`` switch, a flood of
checkouts), observes what the shop did (numbers), and restores what it changed — always, in a
``finally``, even on Ctrl-C or an exception. :func:`drill_run` then cleans up what the drill
created (:meth:`DrillRun.cleanup`) and the command runs ``audit_invariants``.

What stays afterwards, and why:

* Orders that were **never paid** (the flood's, the read-only probe's, payments that failed) are
  cancelled, then removed with their lines, events, stock reservations and unpublished outbox
  messages: they carry no money, and their reservations would otherwise pin the drill's SKU.
* Orders that **were paid** are money history (the ledger, the bank's records, settlement files
  that reconciliation will compare): they stay, refunded in full. Their stock reservations
  reference the drill's SKU (``Reservation.sku`` is PROTECT, and the audit checks every order's
  reservations), so that SKU, its product and the drill category are *retired* — deactivated,
  invisible in the shop, named ``DRILL-…`` — rather than deleted. Every other drill SKU, and
  the product and category when nothing references them, are deleted with their stock.
* The drill's buyers (``drill-<stamp>-<n>``, no usable password) are deactivated.

Scenarios use the apps' public services and selectors; the only direct writes are the
creation and removal of the drill's own rows above, for which the apps offer no service.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.test import Client
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.catalog.models import Category, Product, Sku
from apps.catalog.services import catalog_changed, categories_changed
from apps.inventory.models import Reservation, Stock
from apps.inventory.services import stock_receive
from apps.orders.exceptions import InvalidOrderState, OrderNotFound
from apps.orders.models import Order, OrderStatus
from apps.orders.services import order_cancel, order_place
from apps.payments.exceptions import PaymentInProgress
from apps.payments.models import Payment, PaymentAttempt, PaymentStatus
from apps.payments.services import payment_pay, payment_settle_now, refund_create
from apps.payments.services.channels import breaker_for, channels_rank, health_for
from apps.users.services import users_deactivate
from shop.errors import ShopError
from shop.http import HttpError, http_json
from shop.models import OutboxMessage
from shop.runtime import switch_set, switches_current
from shop.sharding import order_shard_aliases, shard_for_id, shard_for_user

# Price of the drill's test SKUs: within every sandbox channel's limits (min 100 cents).
DRILL_PRICE = 1500
DRILL_ACTOR = "drill"

S = OrderStatus


class DrillError(Exception):
    """A drill cannot run (no channel to drill, the acquirer's fault API unreachable, ...)."""


@dataclass
class DrillOptions:
    orders: int | None = None  # payments per bank scenario; checkouts of the flood
    units: int | None = None  # the flood's units (default: a quarter of the checkouts)
    channel: str | None = None  # the bank channel to drill (default: the one routing prefers)
    threads: int = 8


@dataclass
class Report:
    scenario: str
    ok: bool = False
    did: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    restored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- What the drill creates, and how it goes away -------------------------------------------------


class DrillRun:
    """One drill's test data: buyers, a category, a product and SKUs named ``DRILL-<stamp>``,
    and the orders placed. :meth:`cleanup` undoes it (see the module docstring)."""

    def __init__(self) -> None:
        self.stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
        self.name = f"DRILL-{self.stamp}"
        self.buyers: list[Any] = []
        self.skus: list[Sku] = []
        self.order_ids: list[int] = []
        self._lock = threading.Lock()
        self._category: Category | None = None
        self._product: Product | None = None
        self._payments_sku: Sku | None = None

    def buyer(self) -> Any:
        user = get_user_model().objects.create_user(
            username=f"drill-{self.stamp}-{len(self.buyers) + 1}", password=None
        )
        self.buyers.append(user)
        return user

    def sku(self, *, label: str, units: int) -> Sku:
        if self._product is None:
            # Active while the drill runs: checkout only sells what the shop shows.
            self._category = Category.objects.create(name=self.name, slug=self.name.lower())
            self._product = Product.objects.create(
                category=self._category,
                name=f"{self.name} (game-day drill test product)",
                slug=self.name.lower(),
                description="Created by `manage.py drill`; removed when the drill ends.",
            )
        sku = Sku.objects.create(
            product=self._product, code=f"{self.name}-{label}", price=DRILL_PRICE, currency="EUR"
        )
        stock_receive(sku_id=sku.id, quantity=units)
        self.skus.append(sku)
        return sku

    def payments_sku(self, *, units: int) -> Sku:
        """The one SKU every paid test order of this run buys (``units`` more of it): paid
        orders pin their SKU, so a run retires at most this one."""
        if self._payments_sku is None:
            self._payments_sku = self.sku(label="pay", units=units)
        else:
            stock_receive(sku_id=self._payments_sku.id, quantity=units)
        return self._payments_sku

    def place(self, *, buyer: Any, sku: Sku) -> Order:
        order = order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        self.track(order.id)
        return order

    def track(self, order_id: int) -> None:
        with self._lock:
            self.order_ids.append(order_id)

    # --- Cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> dict[str, Any]:
        """Settle, cancel or refund every order the drill placed, remove what carries no money,
        retire what history still references, deactivate the buyers. Returns the counts."""
        summary: Counter[str] = Counter()
        problems: list[str] = []
        for buyer in self.buyers:  # the read-only probe may have placed an order untracked
            for alias in order_shard_aliases():
                for order_id in (
                    Order.objects.using(alias).filter(user_id=buyer.id).values_list("id", flat=True)
                ):
                    if order_id not in self.order_ids:
                        self.track(order_id)
        for order_id in self.order_ids:
            try:
                summary[self._close_order(order_id)] += 1
            except (ShopError, DatabaseError) as exc:
                problems.append(f"order {order_id}: {exc}")
        summary["orders_removed"] = self._purge_unpaid()
        retired = self._remove_catalog()
        summary["skus_removed"] = len(self.skus) - len(retired)
        summary["skus_retired"] = len(retired)
        if self.buyers:
            users_deactivate(user_ids=[b.id for b in self.buyers])
            summary["buyers_deactivated"] = len(self.buyers)
        return {"counts": dict(summary), "retired": retired, "problems": problems}

    def _close_order(self, order_id: int) -> str:
        alias = shard_for_id(order_id)
        order = Order.objects.using(alias).get(id=order_id)
        live = Payment.objects.using(alias).filter(
            order_id=order_id, status__in=[PaymentStatus.UNKNOWN, PaymentStatus.PENDING]
        )
        for payment_id in live.values_list("id", flat=True):
            payment_settle_now(payment_id=payment_id)
        order.refresh_from_db()
        if order.status == S.PENDING_PAYMENT:
            order_cancel(order_id=order_id, actor=DRILL_ACTOR, reason="game-day drill cleanup")
            return "orders_cancelled"
        if order.status in (S.PAID, S.PROCESSING, S.FULFILLED):
            refund = refund_create(
                order_id=order_id,
                amount=order.total,
                actor=DRILL_ACTOR,
                reason="game-day drill: a test order, paid back in full",
            )
            return f"orders_refunded_{refund.status}"
        return f"orders_already_{order.status}"

    def _purge_unpaid(self) -> int:
        """Remove the drill's cancelled orders that never had a payment (no money history)."""
        removed = 0
        for order_id in self.order_ids:
            alias = shard_for_id(order_id)
            order = Order.objects.using(alias).filter(id=order_id, status=S.CANCELLED).first()
            if order is None or Payment.objects.using(alias).filter(order_id=order_id).exists():
                continue
            with transaction.atomic(using=alias):
                for message in OutboxMessage.objects.using(alias).filter(
                    user_id=order.user_id, published_at__isnull=True
                ):
                    if str(message.kwargs.get("order_id")) == str(order_id):
                        message.delete()
                order.delete()  # its lines, events and steps cascade
            Reservation.objects.filter(order_id=order_id).delete()
            removed += 1
        return removed

    def _remove_catalog(self) -> list[str]:
        """Delete the drill's SKUs (with their stock), product and category; a SKU that paid
        orders' reservations still reference is deactivated instead. Returns those codes."""
        retired = []
        for sku in self.skus:
            if Reservation.objects.filter(sku_id=sku.id).exists():
                Sku.objects.filter(id=sku.id).update(is_active=False)
                retired.append(sku.code)
                continue
            with transaction.atomic(using="default"):
                Stock.objects.filter(sku_id=sku.id).delete()
                sku.delete()
        if self._product is not None:
            product_id = self._product.id
            if retired:
                Product.objects.filter(id=product_id).update(is_active=False)
                Category.objects.filter(id=self._category.id).update(is_active=False)
            else:
                self._product.delete()
                self._category.delete()
            # Cached pages and listings that showed the drill's product forget it.
            catalog_changed(product_ids=[product_id])
            categories_changed()
        return retired


# --- Injecting, and always restoring ----------------------------------------------------------


def _acquirer_url(path: str) -> str:
    return f"{settings.ACQUIRER_URL.rstrip('/')}{path}"


def acquirer_faults(channel: str) -> dict[str, Any]:
    """The channel's current faults at the sandbox acquirer (``GET /channels/{code}``)."""
    try:
        response = http_json(
            "GET",
            _acquirer_url(f"/channels/{channel}"),
            # The acquirer's fault API answers like its channels: the same timeouts.
            connect_timeout=settings.CHANNEL_CONNECT_TIMEOUT,
            read_timeout=settings.BREAKER_CALL_TIMEOUT,
        )
    except HttpError as exc:
        raise DrillError(f"the acquirer's fault API at {settings.ACQUIRER_URL}: {exc}") from exc
    if response.status != 200 or not isinstance(response.body, dict):
        raise DrillError(f"the acquirer has no channel {channel!r} (HTTP {response.status})")
    return response.body.get("faults", {})


def acquirer_faults_set(channel: str, faults: dict[str, Any]) -> None:
    """Replace the channel's faults (``PUT /channels/{code}/faults``; ``{}`` = healthy)."""
    try:
        response = http_json(
            "PUT",
            _acquirer_url(f"/channels/{channel}/faults"),
            faults,
            # The acquirer's fault API answers like its channels: the same timeouts.
            connect_timeout=settings.CHANNEL_CONNECT_TIMEOUT,
            read_timeout=settings.BREAKER_CALL_TIMEOUT,
        )
    except HttpError as exc:
        raise DrillError(f"the acquirer's fault API at {settings.ACQUIRER_URL}: {exc}") from exc
    if response.status != 200:
        raise DrillError(f"faults refused for {channel} (HTTP {response.status}): {response.body}")


@contextlib.contextmanager
def faults_injected(report: Report, channel: str, faults: dict[str, Any]) -> Iterator[None]:
    before = acquirer_faults(channel)
    acquirer_faults_set(channel, faults)
    report.did.append(f"acquirer: PUT /channels/{channel}/faults {faults}")
    try:
        yield
    finally:
        acquirer_faults_set(channel, before)
        report.restored.append(f"acquirer: {channel}'s faults as before the drill")


@contextlib.contextmanager
def breaker_restored(report: Report, channel: str) -> Iterator[None]:
    """Whatever happens inside, the channel's breaker ends as it was: a breaker the drill found
    closed is closed again (failures forgotten); one forced open by an operator stays so."""
    before = breaker_for(channel).snapshot()
    try:
        yield
    finally:
        breaker = breaker_for(channel)
        if before["forced"]:
            breaker.force_open()
        elif before["state"] == "closed" and breaker.state() != "closed":
            breaker.force_close()
        report.restored.append(f"breaker of {channel}: {breaker.state()}")


@contextlib.contextmanager
def switch_flipped(report: Report, name: str, on: bool) -> Iterator[None]:
    before = switches_current()[name]
    switch_set(name=name, on=on, note="game-day drill")
    report.did.append(f"switch {name}: {'on' if on else 'off'}")
    try:
        yield
    finally:
        switch_set(name=name, on=before, note="restored after a game-day drill")
        report.restored.append(f"switch {name}: {'on' if before else 'off'} (as before)")


def _drilled_channel(options: DrillOptions) -> str:
    """The channel to drill: the one asked for, else the one routing would pick now."""
    ranked = channels_rank(method="card", amount=DRILL_PRICE)
    codes = [candidate.channel.code for candidate in ranked]
    if options.channel:
        if options.channel not in codes:
            raise DrillError(
                f"channel {options.channel!r} cannot take a card payment now "
                f"(available: {', '.join(codes) or 'none'})"
            )
        return options.channel
    if len(codes) < 2:
        raise DrillError(
            "a bank drill needs two card channels in service (available: "
            f"{', '.join(codes) or 'none'})"
        )
    return codes[0]


# --- Paying -----------------------------------------------------------------------------------


def _pay_orders(
    run: DrillRun, count: int, *, channel: str | None = None
) -> tuple[Any, list[Payment]]:
    buyer = run.buyer()
    sku = run.payments_sku(units=count)
    payments = []
    for _ in range(count):
        order = run.place(buyer=buyer, sku=sku)
        try:
            payments.append(
                payment_pay(order_id=order.id, user_id=buyer.id, method="card", channel=channel)
            )
        except (InvalidOrderState, PaymentInProgress, OrderNotFound) as exc:
            raise DrillError(f"order {order.id} could not be paid: {exc}") from exc
    return buyer, payments


def _payment_counts(payments: list[Payment]) -> dict[str, Any]:
    return {
        "payments": len(payments),
        "by_status": dict(Counter(str(p.status) for p in payments)),
        "by_channel": dict(Counter(p.channel or "-" for p in payments)),
    }


def _attempt_outcomes(payments: list[Payment]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for payment in payments:
        counts.update(
            PaymentAttempt.objects.using(payment._state.db)
            .filter(payment_id=payment.id)
            .values_list("outcome", flat=True)
        )
    return dict(counts)


def _now_status(payment: Payment) -> str:
    return Payment.objects.using(payment._state.db).get(id=payment.id).status


# --- Scenarios --------------------------------------------------------------------------------


def drill_bank_outage(run: DrillRun, options: DrillOptions) -> Report:
    """One card channel down (outage: it answers 503): payments fail over to another channel,
    and the down channel's breaker opens after enough failures."""
    report = Report("bank-outage")
    channel = _drilled_channel(options)
    count = options.orders or 3
    with breaker_restored(report, channel), faults_injected(report, channel, {"outage": True}):
        _, payments = _pay_orders(run, count)
        report.did.append(f"paid {count} test order(s) by card")
        report.observed = {
            "channel_down": channel,
            **_payment_counts(payments),
            "attempt_outcomes": _attempt_outcomes(payments),
            "breaker_of_down_channel": breaker_for(channel).state(),
            "health_of_down_channel": _health(channel),
        }
    succeeded = [p for p in payments if p.status == PaymentStatus.SUCCEEDED]
    on_down = [p for p in payments if p.channel == channel and p.status == "succeeded"]
    report.ok = len(succeeded) == count and not on_down
    if not report.ok:
        report.problems.append(
            f"{len(succeeded)}/{count} payments succeeded, {len(on_down)} at the down channel"
        )
    return report


def drill_lost_answers(run: DrillRun, options: DrillOptions) -> Report:
    """Every answer of one channel is lost (the bank acted, we heard nothing): each payment
    that reached it is settled by a status query, or left `unknown` and settled once the channel
    answers again — never charged twice. Lost answers count as failures, so the channel's
    breaker may open: payments asked after that are refused before reaching it."""
    report = Report("lost-answers")
    channel = _drilled_channel(options)
    count = options.orders or 3
    lost = {"lose_response_rate": 1.0}
    with breaker_restored(report, channel), faults_injected(report, channel, lost):
        _, payments = _pay_orders(run, count, channel=channel)
        report.did.append(f"paid {count} test order(s) by card at {channel}")
        first = _payment_counts(payments)
        # Lost answers count as failures: the breaker may have opened, and then even the
        # status queries that settle a payment wait until it is restored.
        breaker_state = breaker_for(channel).state()
    # The channel answers again and its breaker is as before: settle what is still unknown.
    unknown = [p for p in payments if p.status == PaymentStatus.UNKNOWN]
    for payment in unknown:
        payment_settle_now(payment_id=payment.id)
    if unknown:
        report.did.append(f"settled {len(unknown)} unknown payment(s) (payment_settle_now)")
    final = {p.id: str(_now_status(p)) for p in payments}
    # A payment asked after the breaker opened never reached the bank (`failed`, nothing
    # charged): the breaker did its job. One that reached it must end captured.
    reached = [p for p in payments if _attempt_outcomes([p])]
    report.observed = {
        "channel": channel,
        "first_answers": first,
        "attempt_outcomes": _attempt_outcomes(payments),
        "breaker_while_injected": breaker_state,
        "settled_later": len(unknown),
        "reached_the_bank": len(reached),
        "final_by_status": dict(Counter(final.values())),
    }
    settled = [p for p in reached if final[p.id] == PaymentStatus.SUCCEEDED]
    open_ = [p for p in payments if final[p.id] in (PaymentStatus.UNKNOWN, PaymentStatus.PENDING)]
    report.ok = bool(reached) and len(settled) == len(reached) and not open_
    if not report.ok:
        report.problems.append(
            f"{len(settled)} of {len(reached)} payments that reached {channel} succeeded; "
            f"{len(open_)} still unknown or pending"
        )
    return report


def drill_breaker(run: DrillRun, options: DrillOptions) -> Report:
    """One channel's breaker forced open (as an operator would): routing avoids it."""
    report = Report("breaker")
    channel = _drilled_channel(options)
    count = options.orders or 3
    with breaker_restored(report, channel):
        breaker_for(channel).force_open()
        report.did.append(f"breaker of {channel}: forced open")
        ranked = [c.channel.code for c in channels_rank(method="card", amount=DRILL_PRICE)]
        _, payments = _pay_orders(run, count)
        report.did.append(f"paid {count} test order(s) by card")
        report.observed = {
            "breaker_forced_open": channel,
            "routing_order": ranked,
            **_payment_counts(payments),
        }
    succeeded = [p for p in payments if p.status == PaymentStatus.SUCCEEDED]
    report.ok = (
        channel not in ranked
        and len(succeeded) == count
        and all(p.channel != channel for p in payments)
    )
    if not report.ok:
        report.problems.append(f"{len(succeeded)}/{count} succeeded; routing: {ranked}")
    return report


def _host() -> str:
    for host in settings.ALLOWED_HOSTS:
        if host not in ("*", "") and not host.startswith("."):
            return host
        if host.startswith("."):
            return f"drill{host}"
    return "testserver"


def drill_read_only(run: DrillRun, options: DrillOptions) -> Report:
    """The ``read_only`` switch on: a checkout through the real HTTP stack answers 503 and
    writes nothing."""
    report = Report("read-only")
    buyer = run.buyer()
    sku = run.sku(label="readonly", units=1)
    token = Token.objects.create(user=buyer)
    client = Client(HTTP_HOST=_host())

    def orders_of_buyer() -> int:
        return Order.objects.using(shard_for_user(buyer.id)).filter(user_id=buyer.id).count()

    before = orders_of_buyer()
    with switch_flipped(report, "read_only", True):
        response = client.post(
            "/api/v1/orders/",
            {"items": [{"sku": sku.code, "quantity": 1}]},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token.key}",
            HTTP_IDEMPOTENCY_KEY=f"{run.name}-read-only",
        )
        report.did.append("POST /api/v1/orders/ as a drill buyer")
        body = _json(response)
        report.observed = {
            "status": response.status_code,
            "code": body.get("code"),
            "retry_after": response.headers.get("Retry-After"),
            "orders_written": orders_of_buyer() - before,
        }
    report.ok = response.status_code == 503 and report.observed["orders_written"] == 0
    if not report.ok:
        report.problems.append(f"expected 503 and no order, got {report.observed}")
    return report


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def drill_checkout_flood(run: DrillRun, options: DrillOptions) -> Report:
    """N concurrent checkouts (threads) for a test SKU with K units: exactly K orders, the
    rest refused out of stock, nothing oversold."""
    report = Report("checkout-flood")
    attempts = options.orders or 40
    units = options.units or max(1, attempts // 4)
    threads = min(attempts, options.threads)
    buyers = [run.buyer() for _ in range(threads)]
    sku = run.sku(label="flood", units=units)
    report.did.append(f"test SKU {sku.code} with {units} unit(s)")

    def checkout(index: int) -> str:
        try:
            run.place(buyer=buyers[index % len(buyers)], sku=sku)
            return "ordered"
        except ShopError as exc:
            return exc.code
        except DatabaseError as exc:  # counted, not raised: the crowd goes on
            return f"database_error:{type(exc).__name__}"
        finally:
            connections.close_all()

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        outcomes = Counter(pool.map(checkout, range(attempts)))
    report.did.append(f"{attempts} checkouts from {threads} threads")
    stock = Stock.objects.get(sku_id=sku.id)
    report.observed = {
        "attempts": attempts,
        "units": units,
        "outcomes": dict(outcomes),
        "seconds": round(time.monotonic() - start, 2),
        "stock": {"available": stock.available, "reserved": stock.reserved, "sold": stock.sold},
    }
    ordered = outcomes.get("ordered", 0)
    report.ok = (
        ordered == min(units, attempts)
        and set(outcomes) <= {"ordered", "out_of_stock"}
        and stock.available + stock.reserved + stock.sold == units
        and stock.reserved == ordered
    )
    if not report.ok:
        report.problems.append(f"expected {min(units, attempts)} orders, got {dict(outcomes)}")
    return report


def _health(channel: str) -> dict[str, Any] | None:
    stats = health_for(channel).read()
    if stats is None:
        return None
    return {"calls": stats.total, "failed": stats.failed, "success_rate": stats.success_rate}


SCENARIOS: dict[str, Callable[[DrillRun, DrillOptions], Report]] = {
    "bank-outage": drill_bank_outage,
    "lost-answers": drill_lost_answers,
    "breaker": drill_breaker,
    "read-only": drill_read_only,
    "checkout-flood": drill_checkout_flood,
}


@dataclass
class DrillResult:
    reports: list[Report]
    cleanup: dict[str, Any]
    audit_ok: bool
    audit_output: str

    @property
    def ok(self) -> bool:
        return self.audit_ok and all(r.ok for r in self.reports) and not self.cleanup["problems"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scenarios": [r.as_dict() for r in self.reports],
            "cleanup": self.cleanup,
            "audit": {"ok": self.audit_ok, "output": self.audit_output},
        }


def audit_run() -> tuple[bool, str]:
    """``audit_invariants`` in this process: (clean?, what it printed)."""
    out = io.StringIO()
    try:
        call_command("audit_invariants", stdout=out)
    except SystemExit as exc:
        return exc.code in (0, None), out.getvalue()
    return True, out.getvalue()


def drill_run(names: list[str], options: DrillOptions) -> DrillResult:
    """Run the scenarios in order, then clean up and audit. A scenario that cannot run is
    reported (not raised); Ctrl-C stops the run, but cleanup and restores still happen."""
    run = DrillRun()
    reports: list[Report] = []
    try:
        for name in names:
            try:
                reports.append(SCENARIOS[name](run, options))
            except (DrillError, ShopError, HttpError) as exc:
                reports.append(Report(name, problems=[str(exc)]))
    finally:
        cleanup = run.cleanup()
    audit_ok, audit_output = audit_run()
    return DrillResult(reports, cleanup, audit_ok, audit_output)
