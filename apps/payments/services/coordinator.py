"""Paying an order: a TCC global transaction with fenced branches.

Branches (each with a fence in its own database, see ``shop.tcc``):

* ``order`` (the order's shard) — try: the order must be unpaid and unexpired; a `pending`
  Payment is created (a partial unique index allows one live payment per order) and the order
  is held against expiry and cancellation. confirm: payment `succeeded`, order `paid` (its
  processing queued through the outbox), then its stock committed. cancel: payment `failed`,
  the order payable again (its stock stays reserved until it expires).
* ``wallet`` (`default`) — try: freeze the amount; confirm: pay the merchant from the frozen
  money; cancel: unfreeze. A wallet payment's wallet is its last branch, so its try, the
  decision and its confirm are one local transaction (see "Wallet" below and
  docs/payments.md); a cancel (insufficient funds, an abandoned payment) finds nothing frozen.
* ``channel:<code>`` (remote, fenced on `default`) — try: authorize at the bank (our payment id
  is its idempotency key); confirm: capture, then post the card capture to the ledger; cancel:
  void.

The coordinator writes its decision (``confirming`` / ``cancelling``) before acting on it, so
:func:`tcc_recover` can finish any transaction left half-way after a crash: it re-runs the
decision, or — for a transaction still ``trying`` after TCC_TRYING_TIMEOUT — asks the channel
what happened and confirms (authorized, order still payable) or cancels (everything else).

Card routing: channels are ranked (``channels.channels_rank``); retriable failures move on to
the next channel; a timeout or lost answer is resolved by asking the same channel before any
other is tried; if even that query fails the payment is `unknown` and nothing else is tried.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.utils import timezone

from apps.orders import services as orders
from apps.orders.exceptions import InvalidOrderState, OrderNotFound
from apps.orders.models import Order
from apps.orders.selectors import order_get
from apps.payments.exceptions import InsufficientFunds, PaymentInProgress
from apps.payments.metrics import PAYMENTS, attempt_observed
from apps.payments.models import (
    Payment,
    PaymentAttempt,
    PaymentChannel,
    PaymentStatus,
    TccBranch,
    TccTransaction,
)
from apps.payments.services import ledger
from apps.payments.services.channels import (
    ChannelClient,
    ChannelError,
    ChannelOutcomeUnknown,
    ChannelRejected,
    channels_rank,
)
from shop.logs import log_context_bind
from shop.models import FenceStatus, TccFence, TccShardFence
from shop.review import review_file
from shop.rowwrites import RowWrite, insert_sql, inserted, known, rows_write, update_sql
from shop.sharding import shard_for_id
from shop.sharding.ids import id_generate, id_is_plausible, id_logical_shard
from shop.sharding.loops import shards_each
from shop.tcc import FenceRefused, fence_cancel, fence_confirm, fence_try

logger = logging.getLogger(__name__)

T = TccTransaction.Status
B = TccBranch.Status
WALLET, CARD = "wallet", "card"
METHODS = (WALLET, CARD)
CHANNEL_PREFIX = "channel:"


# --- Reading ------------------------------------------------------------------------------------


def _payment(payment_id: int) -> Payment:
    return Payment.objects.using(shard_for_id(payment_id)).get(id=payment_id)


def _branch(tcc: TccTransaction, name: str, status: str, detail: str = "") -> None:
    """Record a branch's status for operators: one statement. Registering inserts the row
    (a branch registered before keeps its status); every later status updates it, creating it
    if it is somehow missing."""
    fields = {"status": status, "detail": detail[:300], "updated_at": timezone.now()}
    if status == B.REGISTERED:
        TccBranch.objects.bulk_create(
            [TccBranch(transaction=tcc, branch=name, **fields)], ignore_conflicts=True
        )
    elif not TccBranch.objects.filter(transaction=tcc, branch=name).update(**fields):
        TccBranch.objects.get_or_create(transaction=tcc, branch=name, defaults=fields)


def _attempt(
    payment: Payment, channel: str, outcome: str, reason: str, detail: str = "", latency_ms: int = 0
) -> None:
    PaymentAttempt.objects.using(payment._state.db).create(
        payment=payment,
        user_id=payment.user_id,
        channel=channel,
        outcome=outcome,
        reason=reason[:300],
        detail=detail[:300],
        latency_ms=latency_ms,
    )
    attempt_observed(channel=channel, outcome=outcome, latency_ms=latency_ms or None)


def _set_payment(payment: Payment, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(payment, name, value)
    Payment.objects.using(payment._state.db).filter(id=payment.id).update(
        updated_at=timezone.now(), **fields
    )


# --- Pay ---------------------------------------------------------------------------------------


def payment_pay(
    *,
    order_id: int,
    user_id: int,
    method: str,
    channel: str | None = None,
    on_started: Callable[[Payment], Sequence[RowWrite] | None] | None = None,
    on_settled: Callable[[Payment], Sequence[RowWrite] | None] | None = None,
) -> Payment:
    """Pay a buyer's unpaid order with their wallet or a card. Returns the payment, whose
    status is `succeeded`, `failed` (declined, insufficient funds, no channel), `pending`
    (decided, being finished) or `unknown` (a channel's answer was lost; settled later).

    Raises OrderNotFound, InvalidOrderState (not payable) or PaymentInProgress (another payment
    of this order is live or succeeded). ``on_started(payment)`` runs in the transaction that
    creates the payment and may give rows written with it (``shop.rowwrites``: the idempotency
    key records the payment there). ``on_settled(payment)`` runs
    in the transaction on the order's shard that marks a wallet payment succeeded and gives rows
    written in its statement (``shop.rowwrites``: the key's stored response); it does not run
    when the payment ends any other way.
    """
    if method not in METHODS:
        raise ValueError(f"unknown payment method {method!r}")
    if not id_is_plausible(order_id):
        raise OrderNotFound()
    if method == WALLET:
        payment = _pay_wallet(
            order_id=order_id, user_id=user_id, on_started=on_started, on_settled=on_settled
        )
        PAYMENTS.labels(method, payment.status).inc()
        return payment
    alias = shard_for_id(order_id)
    order = Order.objects.using(alias).filter(id=order_id, user_id=user_id).first()
    if order is None:
        raise OrderNotFound()
    if order.status != orders.S.PENDING_PAYMENT:
        raise InvalidOrderState(
            f"An order that is {order.status.replace('_', ' ')} cannot be paid.",
            extra={"status": order.status},
        )
    payment_id = id_generate(alias=alias, logical=id_logical_shard(order_id))
    log_context_bind(order_id=order_id, payment_id=payment_id)
    tcc = TccTransaction.objects.create(
        xid=f"pay-{payment_id}",
        payment_id=payment_id,
        order_id=order_id,
        user_id=user_id,
        next_retry_at=timezone.now() + timedelta(seconds=settings.TCC_TRYING_TIMEOUT),
    )
    _branch(tcc, "order", B.REGISTERED)

    def order_try() -> Payment:
        locked = orders.order_payment_start(order=order)
        try:
            with transaction.atomic(using=alias):
                payment = Payment.objects.using(alias).create(
                    id=payment_id,
                    order=locked,
                    user_id=user_id,
                    method=method,
                    channel=channel or "",
                    amount=locked.total,
                    currency=locked.currency,
                )
        except IntegrityError as exc:
            raise PaymentInProgress() from exc
        if on_started is not None:
            rows_write(alias, on_started(payment) or ())
        return payment

    try:
        payment = fence_try(
            using=alias, xid=tcc.xid, branch="order", user_id=user_id, effect=order_try
        )
    except (InvalidOrderState, PaymentInProgress, FenceRefused) as exc:
        _branch(tcc, "order", B.FAILED, str(exc))
        _decide(tcc, T.CANCELLING)
        _act(tcc)
        raise
    _branch(tcc, "order", B.TRIED)

    payment = _pay_with_card(tcc, payment, requested=channel)
    PAYMENTS.labels(method, payment.status).inc()
    return payment


# --- Wallet: four transactions ------------------------------------------------------------------
#
# 1. shard   `_wallet_order_try`: the order branch's try — its fence, the order held, the
#            payment `pending` (and the idempotency key's resource). No TCC row yet: a crash
#            here leaves an orphan payment that recovery adopts and cancels (presumed abort).
# 2. default `_wallet_pay_and_decide`: the TCC row inserted already `confirming`, the branch
#            rows, the wallet's fence and the money (freeze + capture): the wallet is the last
#            branch to try, so its try succeeding *is* the decision, and its confirm is made
#            in the same local transaction. The row's unique xid refuses this transaction if
#            recovery cancelled the orphan first (anti-hang).
# 3. shard   `_confirm_order`: the order branch's confirm — fence, order `paid`, payment
#            `succeeded`, the outbox message (and the idempotency key's response).
# 4. default `_wallet_finish`: the stock committed, the TCC row and its order branch
#            `confirmed`. A crash before it leaves `confirming`: recovery re-runs the
#            (idempotent) confirm.


class _AlreadyDecided(Exception):
    def __init__(self, tcc: TccTransaction) -> None:
        super().__init__(tcc.xid)
        self.tcc = tcc


def _pay_wallet(
    *,
    order_id: int,
    user_id: int,
    on_started: Callable[[Payment], Sequence[RowWrite] | None] | None,
    on_settled: Callable[[Payment], Sequence[RowWrite] | None] | None,
) -> Payment:
    payment = _wallet_order_try(order_id=order_id, user_id=user_id, on_started=on_started)
    log_context_bind(order_id=order_id, payment_id=payment.id)
    started = time.perf_counter()
    try:
        tcc = _wallet_pay_and_decide(payment)
    except InsufficientFunds as exc:
        attempt_observed(channel=WALLET, outcome="declined")
        return _wallet_declined(payment, exc.message)
    except _AlreadyDecided as decided:  # recovery adopted it first: its decision stands
        return _wallet_follow(decided.tcc, payment)
    attempt_observed(
        channel=WALLET, outcome="authorized", latency_ms=int((time.perf_counter() - started) * 1000)
    )
    try:
        _confirm_order(tcc, payment, on_settled=on_settled, commit_stock=False)
        _wallet_finish(tcc, payment)
    except (DatabaseError, FenceRefused) as exc:
        logger.warning("payment %s decided but not yet confirmed: %s", payment.id, exc)
        _note_failure(tcc, exc)
        return _payment(payment.id)
    return payment


def _wallet_order_try(
    *,
    order_id: int,
    user_id: int,
    on_started: Callable[[Payment], Sequence[RowWrite] | None] | None,
) -> Payment:
    """Transaction 1 (order's shard): the order locked, then its hold, the branch's fence, the
    payment `pending` and ``on_started(payment)``'s rows (the key's resource) in one statement.
    Raises OrderNotFound, InvalidOrderState or PaymentInProgress, leaving nothing behind."""
    alias = shard_for_id(order_id)
    connection = connections[alias]
    try:
        with transaction.atomic(using=alias):
            order = orders.order_lock(order_id=order_id, owner_id=user_id)
            held = orders.order_payment_start_writes(order=order)
            payment_id = id_generate(alias=alias, logical=id_logical_shard(order_id))
            # A fresh xid: no cancel can have come first, so a plain INSERT is the fence.
            fence = TccShardFence(
                user_id=user_id, xid=f"pay-{payment_id}", branch="order", status=FenceStatus.TRIED
            )
            payment = Payment(
                id=payment_id,
                order=order,
                user_id=user_id,
                method=WALLET,
                amount=order.total,
                currency=order.currency,
            )
            rows = [*held, RowWrite(*insert_sql(connection, [fence])),
                    RowWrite(*insert_sql(connection, [payment]))]  # fmt: skip
            started = on_started(payment) if on_started is not None else None
            rows_write(alias, [*rows, *(started or ())])
            inserted(fence, payment, using=alias)
    except IntegrityError as exc:  # the one live payment per order (a partial unique index)
        raise PaymentInProgress() from exc
    return payment


def _wallet_logged(
    payment: Payment,
    *,
    status: str,
    retry_in: float,
    wallet: str,
    fence: str,
    detail: str = "",
    effect: Callable[[str], None] | None = None,
) -> TccTransaction:
    """A wallet payment's transaction logged on `default` in one local transaction: the TCC
    row (``status``, next looked at in ``retry_in`` seconds), its order branch tried, its wallet
    branch in ``wallet`` status and fenced ``fence``, with ``effect(xid)`` (the wallet's money)
    inside it. Raises _AlreadyDecided when another process logged this payment first."""
    xid, now = f"pay-{payment.id}", timezone.now()
    try:
        with transaction.atomic(using="default"):
            tcc = TccTransaction.objects.create(
                xid=xid,
                payment_id=payment.id,
                order_id=payment.order_id,
                user_id=payment.user_id,
                status=status,
                next_retry_at=now + timedelta(seconds=retry_in),
            )
            TccBranch.objects.bulk_create(
                [
                    TccBranch(transaction=tcc, branch="order", status=B.TRIED, updated_at=now),
                    TccBranch(
                        transaction=tcc,
                        branch=WALLET,
                        status=wallet,
                        detail=detail[:300],
                        updated_at=now,
                    ),
                ]
            )
            TccFence.objects.create(xid=xid, branch=WALLET, status=fence)
            if effect is not None:
                effect(xid)
    except IntegrityError:
        existing = TccTransaction.objects.filter(xid=xid).first()
        if existing is None:
            raise
        raise _AlreadyDecided(existing) from None
    return tcc


def _wallet_pay_and_decide(payment: Payment) -> TccTransaction:
    """Transaction 2 (`default`): log, decision and the wallet's money together. Raises
    InsufficientFunds (nothing written) or _AlreadyDecided."""
    return _wallet_logged(
        payment, status=T.CONFIRMING, retry_in=settings.TCC_RETRY_INITIAL,
        wallet=B.CONFIRMED, fence=FenceStatus.CONFIRMED,
        effect=lambda xid: ledger.wallet_pay(user_id=payment.user_id, amount=payment.amount,
                                             currency=payment.currency, reference=xid),
    )  # fmt: skip


def _wallet_declined(payment: Payment, detail: str) -> Payment:
    """Not enough money: the transaction is logged with its wallet branch failed and fenced
    (`suspended`: nothing was frozen, nothing may be later), then cancelled as any other."""
    try:
        tcc = _wallet_logged(
            payment, status=T.TRYING, retry_in=settings.TCC_TRYING_TIMEOUT,
            wallet=B.FAILED, fence=FenceStatus.SUSPENDED, detail=detail,
        )  # fmt: skip
    except _AlreadyDecided as decided:
        return _wallet_follow(decided.tcc, payment)
    return _fail(tcc, payment, "insufficient_funds", detail)


def _wallet_follow(tcc: TccTransaction, payment: Payment) -> Payment:
    """Another process decided this payment first: help its decision along (idempotent)."""
    try:
        _act(tcc)
    except (DatabaseError, FenceRefused) as exc:
        logger.warning("payment %s: following %s not finished yet: %s", payment.id, tcc.xid, exc)
    return _payment(payment.id)


def _wallet_finish(tcc: TccTransaction, payment: Payment) -> None:
    """Transaction 4 (`default`): the paid order's stock committed, the transaction closed."""
    now, connection = timezone.now(), connections["default"]
    with transaction.atomic(using="default"):
        orders.order_stock_commit(order_id=payment.order_id)
        rows_write("default", [
            RowWrite(*update_sql(connection, TccBranch, {"status": B.CONFIRMED, "updated_at": now},
                                 {"transaction": tcc.id, "branch": "order"})),
            RowWrite(*update_sql(connection, TccTransaction,
                                 {"status": T.CONFIRMED, "next_retry_at": None, "updated_at": now},
                                 {"id": tcc.id, "status": T.CONFIRMING})),
        ])  # fmt: skip
    tcc.status, tcc.next_retry_at = T.CONFIRMED, None


def _pay_with_card(tcc: TccTransaction, payment: Payment, *, requested: str | None) -> Payment:
    candidates = channels_rank(method=CARD, amount=payment.amount)
    if requested:
        candidates = [c for c in candidates if c.channel.code == requested]
    if not candidates:
        return _fail(tcc, payment, "no_channel_available", "No card channel can take it now.")
    for rank, candidate in enumerate(candidates, start=1):
        code = candidate.channel.code
        reason = candidate.reason(rank, len(candidates))
        outcome = _authorize(tcc, payment, code, reason)
        if outcome == "authorized":
            _set_payment(payment, channel=code)
            return _succeed(tcc, payment)
        if outcome == "declined":
            return _fail(tcc, payment, "payment_declined", f"Declined by {code}.")
        if outcome == "unknown":
            _set_payment(payment, status=PaymentStatus.UNKNOWN, channel=code)
            tcc.next_retry_at = timezone.now() + timedelta(seconds=settings.TCC_TRYING_TIMEOUT)
            tcc.save(update_fields=["next_retry_at", "updated_at"])
            return payment
        # "unavailable": nothing happened at this channel; fail over to the next one
    return _fail(tcc, payment, "no_channel_available", "Every card channel failed.")


def _authorize(tcc: TccTransaction, payment: Payment, code: str, reason: str) -> str:
    """authorized | declined | unavailable | unknown, with the attempt recorded."""
    branch = f"{CHANNEL_PREFIX}{code}"
    _branch(tcc, branch, B.REGISTERED, reason)
    try:
        fence_try(using="default", xid=tcc.xid, branch=branch, effect=lambda: None)
    except FenceRefused:
        return "unavailable"
    client = ChannelClient(code)
    started = timezone.now()

    def elapsed() -> int:
        return int((timezone.now() - started).total_seconds() * 1000)

    try:
        reply = client.authorize(
            payment_id=payment.id, amount=payment.amount, currency=payment.currency
        )
    except ChannelOutcomeUnknown as exc:
        # Never try another channel blindly: settle what happened at this one first.
        _attempt(payment, code, "timeout", reason, str(exc), elapsed())
        reply = _settle_lost_authorization(client, payment)
        if reply is None:
            _branch(tcc, branch, B.UNKNOWN, str(exc))
            return "unknown"
    except ChannelRejected as exc:
        _attempt(payment, code, "rejected", reason, str(exc), elapsed())
        _cancel_channel_branch(tcc, payment, code)
        return "declined"
    except ChannelError as exc:
        _attempt(payment, code, "unavailable", reason, str(exc), elapsed())
        _cancel_channel_branch(tcc, payment, code)
        return "unavailable"
    else:
        _attempt(payment, code, reply.get("status", "?"), reason, "", elapsed())

    status = reply.get("status")
    if status in ("authorized", "captured"):
        _branch(tcc, branch, B.TRIED, reason)
        return "authorized"
    _cancel_channel_branch(tcc, payment, code)
    if status == "declined":
        return "declined"
    return "unavailable"  # not_found after a timeout: it never happened there


def _settle_lost_authorization(client: ChannelClient, payment: Payment) -> dict[str, Any] | None:
    """After an authorization's answer was lost: ask the channel; if it has no trace, our
    request may still be on its way, so repeat the very same request (our payment id is its
    idempotency key: at most one authorization can result) to get a definite answer. None
    when the outcome stays unknown."""
    for _ in range(2):
        try:
            reply = client.status(payment_id=payment.id)
        except ChannelError as exc:
            _attempt(payment, client.code, "unknown", "status query after a lost answer", str(exc))
            return None
        status = reply.get("status")
        _attempt(payment, client.code, f"queried:{status}", "status query after a lost answer")
        if status != "not_found":
            return reply
        try:
            return client.authorize(
                payment_id=payment.id, amount=payment.amount, currency=payment.currency
            )
        except ChannelOutcomeUnknown:
            continue
        except ChannelError as exc:
            _attempt(payment, client.code, "unknown", "repeated authorization", str(exc))
            return None
    return None


def _cancel_channel_branch(tcc: TccTransaction, payment: Payment, code: str) -> None:
    branch = f"{CHANNEL_PREFIX}{code}"
    fence_cancel(using="default", xid=tcc.xid, branch=branch, effect=lambda: None)
    _branch(tcc, branch, B.CANCELLED)


# --- Decisions ----------------------------------------------------------------------------------


def _decide(tcc: TccTransaction, status: str) -> str:
    """Persist the coordinator's decision before acting on it (recovery re-runs it). Only a
    transaction still `trying` can be decided; if another process (the live request or the
    recovery job) decided first, its decision stands and is returned."""
    next_retry_at = timezone.now() + timedelta(seconds=settings.TCC_RETRY_INITIAL)
    decided = TccTransaction.objects.filter(id=tcc.id, status=T.TRYING).update(
        status=status, next_retry_at=next_retry_at, updated_at=timezone.now()
    )
    if decided:
        tcc.status, tcc.next_retry_at = status, next_retry_at
        return status
    tcc.refresh_from_db()
    if tcc.status != status:
        logger.warning("TCC %s was already decided %s; following it", tcc.xid, tcc.status)
    return tcc.status


def _act(tcc: TccTransaction) -> None:
    if tcc.status == T.CONFIRMING:
        _confirm(tcc)
    elif tcc.status == T.CANCELLING:
        _cancel(tcc)


def _succeed(tcc: TccTransaction, payment: Payment) -> Payment:
    _decide(tcc, T.CONFIRMING)
    try:
        _act(tcc)
    except (ChannelError, DatabaseError, FenceRefused) as exc:
        logger.warning("payment %s decided but not yet confirmed: %s", payment.id, exc)
        _note_failure(tcc, exc)
    return _payment(payment.id)


def _fail(tcc: TccTransaction, payment: Payment, code: str, detail: str) -> Payment:
    _set_payment(payment, failure_code=code, failure_detail=detail[:300])
    _decide(tcc, T.CANCELLING)
    try:
        _act(tcc)
    except (ChannelError, DatabaseError, FenceRefused) as exc:
        logger.warning("payment %s decided failed but not yet cancelled: %s", payment.id, exc)
        _note_failure(tcc, exc)
    return _payment(payment.id)


def _note_failure(tcc: TccTransaction, exc: Exception) -> None:
    tcc.attempts += 1
    delay = min(settings.TCC_RETRY_INITIAL * 2**tcc.attempts, settings.TCC_RETRY_MAX)
    tcc.next_retry_at = timezone.now() + timedelta(seconds=delay)
    tcc.last_error = f"{type(exc).__name__}: {exc}"[:2000]
    tcc.save(update_fields=["attempts", "next_retry_at", "last_error", "updated_at"])


def _branches(tcc: TccTransaction) -> dict[str, str]:
    return dict(tcc.branches.values_list("branch", "status"))


def _confirm(tcc: TccTransaction) -> None:
    """Confirm every tried branch (idempotent), the order last."""
    payment = _payment(tcc.payment_id)
    for name, status in _branches(tcc).items():
        if name == WALLET and status in (B.TRIED, B.CONFIRMED):
            fence_confirm(
                using="default",
                xid=tcc.xid,
                branch=WALLET,
                effect=lambda: ledger.wallet_capture(
                    user_id=payment.user_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    reference=tcc.xid,
                ),
            )
            _branch(tcc, WALLET, B.CONFIRMED)
        elif name.startswith(CHANNEL_PREFIX) and status in (B.TRIED, B.UNKNOWN, B.CONFIRMED):
            code = name.removeprefix(CHANNEL_PREFIX)
            _channel_capture(ChannelClient(code), payment.id)
            channel = PaymentChannel.objects.get(code=code)
            fence_confirm(
                using="default",
                xid=tcc.xid,
                branch=name,
                effect=lambda code=code, channel=channel: ledger.card_capture(
                    channel=code,
                    amount=payment.amount,
                    fee=channel.fee_for(payment.amount),
                    currency=payment.currency,
                    reference=tcc.xid,
                ),
            )
            _branch(tcc, name, B.CONFIRMED)
    _confirm_order(tcc, payment)
    tcc.status = T.CONFIRMED
    tcc.next_retry_at = None
    tcc.save(update_fields=["status", "next_retry_at", "updated_at"])


def _channel_capture(client: ChannelClient, payment_id: int) -> None:
    """Capture (idempotent at the channel); a lost answer is settled by asking."""
    try:
        client.capture(payment_id=payment_id)
    except ChannelOutcomeUnknown:
        if client.status(payment_id=payment_id).get("status") != "captured":
            raise


# What a channel may hold for a payment being cancelled that leaves nothing to undo.
NOTHING_TO_VOID = ("voided", "declined", "not_found")


def _channel_void(tcc: TccTransaction, client: ChannelClient, payment_id: int) -> None:
    """Void whatever the channel authorized; nothing there (declined, never arrived, already
    voided) is fine. A lost answer or a refused void is settled by asking. Raises (the cancel
    stops and is retried) while the channel holds the payment in any other state; one it
    refused to void (captured, refunded) is also filed for manual review, since money was
    taken for a payment the shop is cancelling."""
    try:
        client.void(payment_id=payment_id)
    except ChannelRejected as exc:
        status = client.status(payment_id=payment_id).get("status")
        if status in NOTHING_TO_VOID:
            return
        logger.error(
            "payment %s: %s refused to void it, holds it %s", payment_id, client.code, status
        )
        review_file(
            kind="payment_void_refused",
            reference=str(payment_id),
            summary=f"payment {payment_id} is {status} at {client.code} but its transaction is "
            "being cancelled: refund it at the bank, or settle the order with the buyer",
            details={
                "xid": tcc.xid,
                "channel": client.code,
                "channel_status": status,
                "error": str(exc)[:300],
            },
        )
        raise
    except ChannelOutcomeUnknown:
        status = client.status(payment_id=payment_id).get("status")
        if status not in NOTHING_TO_VOID:
            raise


def _confirm_order(
    tcc: TccTransaction,
    payment: Payment,
    *,
    on_settled: Callable[[Payment], Sequence[RowWrite] | None] | None = None,
    commit_stock: bool = True,
) -> None:
    """The order branch's confirm (one transaction on the shard). With ``commit_stock`` the
    stock is committed after it (idempotent, so also when an earlier run confirmed the order
    and died before committing it) and the branch marked confirmed."""
    alias = payment._state.db

    def settled(order: Order) -> list[RowWrite]:  # written with the order's move to `paid`
        now = timezone.now()
        written = [
            RowWrite(*update_sql(
                connections[alias], Payment,
                {"status": PaymentStatus.SUCCEEDED, "captured_amount": payment.amount,
                 "settled_at": now, "updated_at": now},
                {"id": payment.id},
            ))
        ]  # fmt: skip
        payment.status, payment.captured_amount = PaymentStatus.SUCCEEDED, payment.amount
        payment.settled_at = payment.updated_at = now
        if on_settled is not None:
            # A wallet payment records no channel attempts: its reply needs no query for them.
            payment._prefetched_objects_cache = {
                "attempts": known(PaymentAttempt.objects.using(alias).none(), [])
            }
            written += on_settled(payment) or ()
        return written

    def writes() -> list[RowWrite]:
        # The live request's own order row (from its try) is not read again: its status is
        # checked by the conditional UPDATE all the same.
        known = payment.order if Payment.order.is_cached(payment) else None
        order = known if known is not None else order_get(order_id=payment.order_id)
        if order is None:
            raise OrderNotFound()
        return orders.order_paid_writes(
            order=order, actor="system", reason=f"payment {payment.id} captured",
            also_write=settled,
        )  # fmt: skip

    fence_confirm(using=alias, xid=tcc.xid, branch="order", user_id=payment.user_id, writes=writes)
    if commit_stock:
        orders.order_stock_commit(order_id=payment.order_id)
        _branch(tcc, "order", B.CONFIRMED)


def _cancel(tcc: TccTransaction) -> None:
    """Cancel every branch (idempotent; empty rollbacks for branches never tried), the order
    last so no second payment starts while this one still holds money."""
    payment = Payment.objects.using(shard_for_id(tcc.payment_id)).filter(id=tcc.payment_id).first()
    for name, status in _branches(tcc).items():
        if name == WALLET:
            fence_cancel(
                using="default",
                xid=tcc.xid,
                branch=WALLET,
                effect=lambda: ledger.wallet_unfreeze(
                    user_id=payment.user_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    reference=tcc.xid,
                ),
            )
            _branch(tcc, WALLET, B.CANCELLED)
        elif name.startswith(CHANNEL_PREFIX) and status != B.CANCELLED:
            code = name.removeprefix(CHANNEL_PREFIX)
            if payment is not None:
                _channel_void(tcc, ChannelClient(code), payment.id)
            fence_cancel(using="default", xid=tcc.xid, branch=name, effect=lambda: None)
            _branch(tcc, name, B.CANCELLED)
    _cancel_order(tcc, payment)
    tcc.status = T.CANCELLED
    tcc.next_retry_at = None
    tcc.save(update_fields=["status", "next_retry_at", "updated_at"])


def _cancel_order(tcc: TccTransaction, payment: Payment | None) -> None:
    alias = shard_for_id(tcc.payment_id)

    def effect() -> None:
        if payment is None:
            return
        Payment.objects.using(alias).filter(id=payment.id).update(
            status=PaymentStatus.FAILED,
            failure_code=payment.failure_code or "cancelled",
            updated_at=timezone.now(),
        )
        order = Order.objects.using(alias).get(id=payment.order_id)
        orders.order_payment_end(order=order)

    fence_cancel(using=alias, xid=tcc.xid, branch="order", user_id=tcc.user_id, effect=effect)
    _branch(tcc, "order", B.CANCELLED)


# --- Recovery -----------------------------------------------------------------------------------


def tcc_drive(tcc: TccTransaction) -> str:
    """Move one open transaction on: re-run its decision, or decide a stale `trying` one by
    asking the channel. Returns its status afterwards."""
    if tcc.status == T.CONFIRMING:
        _confirm(tcc)
    elif tcc.status == T.CANCELLING:
        _cancel(tcc)
    elif tcc.status == T.TRYING:
        _decide_stale(tcc)
    return tcc.status


def _decide_stale(tcc: TccTransaction) -> None:
    payment = Payment.objects.using(shard_for_id(tcc.payment_id)).filter(id=tcc.payment_id).first()
    branches = _branches(tcc)
    channel_branches = [
        name
        for name, status in branches.items()
        if name.startswith(CHANNEL_PREFIX) and status in (B.TRIED, B.UNKNOWN, B.REGISTERED)
    ]
    for name in channel_branches:
        code = name.removeprefix(CHANNEL_PREFIX)
        status = ChannelClient(code).status(payment_id=tcc.payment_id).get("status")
        if status in ("authorized", "captured") and payment is not None:
            _attempt(payment, code, f"queried:{status}", "recovery status query")
            _branch(tcc, name, B.TRIED)
            _set_payment(payment, channel=code, status=PaymentStatus.PENDING)
            order = Order.objects.using(payment._state.db).get(id=payment.order_id)
            if order.status == orders.S.PENDING_PAYMENT:
                _decide(tcc, T.CONFIRMING)
                _act(tcc)
                return
        elif payment is not None:
            _attempt(payment, code, f"queried:{status}", "recovery status query")
    # Nothing authorized anywhere (or the order cannot take it any more): presumed abort.
    if payment is not None and not payment.failure_code:
        _set_payment(payment, failure_code="abandoned", failure_detail="not completed in time")
    _decide(tcc, T.CANCELLING)
    _act(tcc)


def _orphan_adopt(*, payment_id: int, order_id: int, user_id: int) -> bool:
    """A wallet payment whose order branch was tried but whose payer died before the wallet's
    transaction (so no TCC row): presumed abort. The row is inserted `cancelling` (due now);
    its unique xid is also what refuses the wallet's transaction should that payer still be
    alive (anti-hang). False when the payer's own row got there first."""
    now = timezone.now()
    try:
        with transaction.atomic(using="default"):
            tcc = TccTransaction.objects.create(
                xid=f"pay-{payment_id}",
                payment_id=payment_id,
                order_id=order_id,
                user_id=user_id,
                status=T.CANCELLING,
                next_retry_at=now,
            )
            TccBranch.objects.bulk_create(
                [
                    TccBranch(transaction=tcc, branch="order", status=B.TRIED, updated_at=now),
                    TccBranch(transaction=tcc, branch=WALLET, status=B.REGISTERED, updated_at=now),
                ]
            )
    except IntegrityError:
        return False
    Payment.objects.using(shard_for_id(payment_id)).filter(id=payment_id, failure_code="").update(
        failure_code="abandoned", failure_detail="not completed in time", updated_at=now
    )
    logger.warning(
        "wallet payment %s abandoned before its wallet was tried; cancelling", payment_id
    )
    return True


def _orphans_adopt(*, limit: int) -> int:
    """Adopt every wallet payment left `pending` over TCC_TRYING_TIMEOUT without a TCC row
    (one indexed query per shard, one on `default`)."""
    cutoff = timezone.now() - timedelta(seconds=settings.TCC_TRYING_TIMEOUT)
    found = shards_each(
        "tcc_orphans",
        lambda alias: list(
            Payment.objects.using(alias)
            .filter(status=PaymentStatus.PENDING, method=WALLET, updated_at__lt=cutoff)
            .order_by("updated_at")
            .values_list("id", "order_id", "user_id")[:limit]
        ),
    )
    pending = [row for rows in found.values() for row in rows]
    if not pending:
        return 0
    logged = set(
        TccTransaction.objects.filter(payment_id__in=[row[0] for row in pending]).values_list(
            "payment_id", flat=True
        )
    )
    return sum(
        _orphan_adopt(payment_id=payment_id, order_id=order_id, user_id=user_id)
        for payment_id, order_id, user_id in pending
        if payment_id not in logged
    )


def tcc_recover(*, limit: int = 100) -> dict[str, int]:
    """Adopt orphan wallet payments, then drive every open transaction that is due (beat,
    every TCC_RECOVERY_SECONDS), backing off exponentially on failure. Returns counts by
    resulting status."""
    try:
        _orphans_adopt(limit=limit)
    except DatabaseError as exc:  # `default` down: nothing else can be driven either
        logger.warning("orphan payments not adopted yet: %s", exc)
    now = timezone.now()
    due = TccTransaction.objects.filter(
        status__in=[T.TRYING, T.CONFIRMING, T.CANCELLING], next_retry_at__lte=now
    ).order_by("next_retry_at")[:limit]
    counts: dict[str, int] = {}
    for tcc in due:
        try:
            status = tcc_drive(tcc)
        except (ChannelError, DatabaseError, FenceRefused) as exc:
            logger.warning("TCC %s not finished yet: %s", tcc.xid, exc)
            _note_failure(tcc, exc)
            status = "retry"
        except Exception as exc:  # one broken transaction must not stop the batch
            logger.exception("TCC %s could not be driven", tcc.xid)
            _note_failure(tcc, exc)
            status = "retry"
        counts[status] = counts.get(status, 0) + 1
    return counts


def payment_settle_now(*, payment_id: int) -> str | None:
    """Settle one payment's transaction now (a webhook arrived, an operator asked): the
    channel is asked, never trusted blindly. Returns the transaction's status."""
    tcc = TccTransaction.objects.filter(payment_id=payment_id).first()
    if tcc is None:
        tcc = _orphan_adopted(payment_id)
    if tcc is None or tcc.status in (T.CONFIRMED, T.CANCELLED):
        return tcc.status if tcc else None
    if tcc.status == T.TRYING and tcc.next_retry_at and tcc.next_retry_at > timezone.now():
        # Still being tried by the request that started it, unless that request has already
        # given up on an answer (payment `unknown`): leave it alone until then.
        payment = Payment.objects.using(shard_for_id(payment_id)).filter(id=payment_id).first()
        if payment is None or payment.status != PaymentStatus.UNKNOWN:
            return tcc.status
    try:
        return tcc_drive(tcc)
    except (ChannelError, DatabaseError, FenceRefused) as exc:
        _note_failure(tcc, exc)
        return tcc.status


def _orphan_adopted(payment_id: int) -> TccTransaction | None:
    """The TCC row of an orphan wallet payment (see :func:`_orphan_adopt`), adopted now if it
    has been pending over TCC_TRYING_TIMEOUT; None for any other payment without one."""
    cutoff = timezone.now() - timedelta(seconds=settings.TCC_TRYING_TIMEOUT)
    payment = (
        Payment.objects.using(shard_for_id(payment_id))
        .filter(id=payment_id, status=PaymentStatus.PENDING, method=WALLET, updated_at__lt=cutoff)
        .first()
    )
    if payment is None:
        return None
    _orphan_adopt(payment_id=payment.id, order_id=payment.order_id, user_id=payment.user_id)
    return TccTransaction.objects.filter(payment_id=payment_id).first()


__all__ = ["payment_pay", "payment_settle_now", "tcc_drive", "tcc_recover"]
