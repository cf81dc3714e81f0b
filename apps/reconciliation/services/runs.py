"""Reconciliation runs: one channel, one business day — match, record, handle, report.

Re-running a day gives the same result: discrepancies are unique per (channel, day, outcome,
key) and every corrective action is idempotent (ledger postings by reference, one open review
item per problem, the payment coordinator's fences). Nothing is guessed: what the shop cannot
prove stays open for an operator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from apps.payments.selectors import card_channel_codes, payment_get, settled_items
from apps.payments.services import payment_settle_now
from apps.payments.services.channels import ChannelClient, ChannelError
from apps.payments.services.ledger import card_capture_reversal
from apps.reconciliation.exceptions import SettlementUnavailable
from apps.reconciliation.metrics import DISCREPANCIES_FOUND
from apps.reconciliation.models import (
    Discrepancy,
    Outcome,
    ReconciliationRun,
    SettlementFile,
)
from apps.reconciliation.services.files import settlement_fetch
from apps.reconciliation.services.matching import Finding, Ours, Tally, bank_groups, match
from shop.alerts import alert_raise
from shop.locks import OwnedLock
from shop.parsing import ParseRefused, parse_id
from shop.review import review_file
from shop.sharding.ids import id_is_plausible

logger = logging.getLogger(__name__)

REVIEW_KIND = "reconciliation"


def business_day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a business day in the shop's time zone (TIME_ZONE)."""
    zone = ZoneInfo(settings.TIME_ZONE)
    start = datetime.combine(day, time.min, tzinfo=zone)
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class RunSummary:
    run: ReconciliationRun
    opened: int  # discrepancies first seen in this run


def reconcile_day(
    *, channel: str, business_day: date, settlement: SettlementFile | None = None
) -> RunSummary:
    """Reconcile ``channel`` for ``business_day`` against ``settlement`` (default: the day's
    file fetched from the acquirer now). Returns the finished run. A run that cannot finish is
    recorded as failed with its error, and the error is re-raised: SettlementUnavailable when
    the file could not be had, anything else as it came (a shard down, a bad bank answer)."""
    lock = OwnedLock(f"reconcile:{channel}:{business_day}", ttl=settings.RECONCILIATION_LOCK_TTL)
    if not _acquire(lock):
        raise SettlementUnavailable(f"{channel} {business_day} is being reconciled right now.")
    try:
        return _run(channel, business_day, settlement)
    finally:
        _release(lock)


def _acquire(lock: OwnedLock) -> bool:
    try:
        return lock.acquire()
    except Exception:  # noqa: BLE001 - no Redis: runs are idempotent, so run unguarded
        logger.warning("reconciliation lock unavailable; running without it")
        return True


def _release(lock: OwnedLock) -> None:
    try:
        lock.release()
    except Exception:  # noqa: BLE001 - it expires on its own
        logger.warning("reconciliation lock not released; it expires by itself")


def _run(channel: str, business_day: date, settlement: SettlementFile | None) -> RunSummary:
    run = ReconciliationRun.objects.create(channel=channel, business_day=business_day)
    try:
        opened = _reconcile(run, channel, business_day, settlement)
    except Exception as exc:
        # Whatever stopped the run (no file, a shard down, a bug), it must not stay "running".
        _fail(run, exc)
        raise
    if opened:
        _alert_new_discrepancies(run, opened)
    return RunSummary(run, sum(opened.values()))


def _reconcile(
    run: ReconciliationRun, channel: str, business_day: date, settlement: SettlementFile | None
) -> dict[str, int]:
    """Match, record and handle; finish ``run`` as completed. Returns the discrepancies first
    seen in this run, per outcome."""
    settlement = settlement or settlement_fetch(channel=channel, business_day=business_day)
    run.file = settlement
    run.save(update_fields=["file"])
    start, end = business_day_bounds(business_day)
    ours = (
        Ours(str(item.payment_id), item.type, item.amount, item.currency)
        for item in settled_items(channel=channel, start=start, end=end)
    )
    tally = Tally()
    opened: dict[str, int] = {}
    for finding in match(ours, bank_groups(settlement), tally):
        if finding.outcome == Outcome.MATCHED:
            tally.matched += 1
            continue
        tally.by_outcome[finding.outcome] = tally.by_outcome.get(finding.outcome, 0) + 1
        tally.unmatched_amount += finding.unmatched_amount
        discrepancy, created = _record(run, channel, business_day, finding)
        if created:
            opened[finding.outcome] = opened.get(finding.outcome, 0) + 1
        if discrepancy.status == Discrepancy.Status.OPEN:
            _handle(discrepancy, finding, channel)
    run.ours_count, run.ours_total = tally.ours_count, tally.ours_total
    run.bank_count, run.bank_total = tally.bank_count, tally.bank_total
    run.matched_count, run.discrepancies = tally.matched, tally.by_outcome
    run.unmatched_amount = tally.unmatched_amount
    _finish(run, ReconciliationRun.Status.COMPLETED)
    return opened


def _fail(run: ReconciliationRun, exc: Exception) -> None:
    """Record ``run`` as failed with the error; the caller re-raises ``exc``."""
    error = str(exc) if isinstance(exc, SettlementUnavailable) else f"{type(exc).__name__}: {exc}"
    try:
        ReconciliationRun.objects.filter(id=run.id).update(
            status=ReconciliationRun.Status.FAILED, error=error, finished_at=timezone.now()
        )
    except DatabaseError:  # `default` itself is down: the original error is what matters
        logger.exception("reconciliation run %s could not be marked failed", run.id)
    run.status, run.error = ReconciliationRun.Status.FAILED, error


def _alert_new_discrepancies(run: ReconciliationRun, opened: dict[str, int]) -> None:
    """One alert per channel and business day: a re-run finding more within the window is
    counted, not sent again."""
    new = sum(opened.values())
    still_open = Discrepancy.objects.filter(first_run=run, status=Discrepancy.Status.OPEN).count()
    counts = ", ".join(f"{kind} {count}" for kind, count in sorted(opened.items()))
    totals = ", ".join(f"{kind} {count}" for kind, count in sorted(run.discrepancies.items()))
    alert_raise(
        kind="reconciliation",
        key=f"{run.channel}:{run.business_day}",
        subject=f"Reconciliation {run.channel} {run.business_day}: {new} new discrepancies",
        body=(
            f"Run {run.id} of {run.channel} for {run.business_day} found {new} new "
            f"discrepancies: {counts}; {still_open} of them still open (the others were "
            f"settled automatically).\nAll discrepancies of this run: {totals}; "
            f"{run.matched_count} matched; unmatched amount {run.unmatched_amount}.\n"
            "Open ones wait in Reconciliation → Discrepancies and in the manual-review queue."
        ),
    )


def _finish(run: ReconciliationRun, status: str, error: str = "") -> None:
    run.status, run.error, run.finished_at = status, error, timezone.now()
    run.save()


def _record(
    run: ReconciliationRun, channel: str, business_day: date, finding: Finding
) -> tuple[Discrepancy, bool]:
    ours = finding.ours
    discrepancy, created = Discrepancy.objects.get_or_create(
        channel=channel,
        business_day=business_day,
        kind=finding.outcome,
        key=finding.key[:160],
        defaults={
            "payment_id": finding.payment_id[:128],
            "ours_amount": ours.amount if ours else None,
            "bank_amount": finding.bank_amount,
            "ours_currency": ours.currency if ours else "",
            "bank_currency": finding.bank_currency,
            "ours_status": "settled" if ours else "",
            "bank_status": finding.bank_status[:20],
            "first_run": run,
            "last_run": run,
        },
    )
    if created:
        DISCREPANCIES_FOUND.labels(channel, finding.outcome).inc()
    else:
        Discrepancy.objects.filter(id=discrepancy.id).update(last_run=run)
    return discrepancy, created


def _resolve(discrepancy: Discrepancy, action: str) -> None:
    Discrepancy.objects.filter(id=discrepancy.id, status=Discrepancy.Status.OPEN).update(
        status=Discrepancy.Status.RESOLVED, action=action[:300], resolved_at=timezone.now()
    )


def _note(discrepancy: Discrepancy, action: str) -> None:
    Discrepancy.objects.filter(id=discrepancy.id).update(action=action[:300])


def discrepancy_review_reference(discrepancy_id: int) -> str:
    return f"discrepancy:{discrepancy_id}"


def _escalate(discrepancy: Discrepancy, summary: str) -> None:
    review_file(
        kind=REVIEW_KIND,
        # One item per discrepancy: its id is unique (a truncated key could merge two) and
        # stable across re-runs, which find the same discrepancy row again.
        reference=discrepancy_review_reference(discrepancy.id),
        summary=summary,
        details={
            "discrepancy": discrepancy.id,
            "ours_amount": discrepancy.ours_amount,
            "bank_amount": discrepancy.bank_amount,
            "payment_id": discrepancy.payment_id,
        },
    )
    _note(discrepancy, summary)


def _handle(discrepancy: Discrepancy, finding: Finding, channel: str) -> None:
    if finding.outcome == Outcome.SYSTEM_ONLY and finding.type == "capture":
        _handle_system_only(discrepancy, finding, channel)
    elif finding.outcome == Outcome.BANK_ONLY and finding.type == "capture":
        _handle_bank_only(discrepancy, finding)
    else:
        _escalate(
            discrepancy,
            f"{finding.outcome.replace('_', ' ').lower()} for {finding.key}: ours "
            f"{discrepancy.ours_amount} {discrepancy.ours_currency or ''}, bank "
            f"{discrepancy.bank_amount} {discrepancy.bank_currency} ({discrepancy.bank_status})",
        )


# What the bank reports for a payment it never captured (apps/payments/sandbox/acquirer.py):
# no record, an authorization never captured, a declined or a voided one. Only these prove our
# capture did not happen; any other answer (captured, refunded, pending, none, a malformed body)
# proves nothing, so it goes to an operator and no money moves.
NOT_CAPTURED_STATUSES = frozenset({"not_found", "authorized", "declined", "voided"})


def _handle_system_only(discrepancy: Discrepancy, finding: Finding, channel: str) -> None:
    """We booked a capture the bank's file lacks: ask the bank."""
    payment_id = int(finding.payment_id)
    try:
        answer = ChannelClient(channel).status(payment_id=payment_id)
    except ChannelError as exc:
        _escalate(
            discrepancy,
            f"capture {payment_id} missing from the file; the bank could not be asked ({exc})",
        )
        return
    status = answer.get("status") if isinstance(answer, dict) else None
    if status in ("captured", "refunded"):
        _escalate(discrepancy, f"the bank confirms capture {payment_id} but its file omits it")
        return
    if status not in NOT_CAPTURED_STATUSES:
        _escalate(
            discrepancy,
            f"capture {payment_id} missing from the file; the bank's answer proves nothing "
            f"({str(answer)[:120]}), so the ledger was left as it is",
        )
        return
    # The bank says no capture happened: our books are wrong. Correct them, tell operators.
    payment = payment_get(payment_id=payment_id)
    reversed_now = card_capture_reversal(capture_reference=f"pay-{payment_id}")
    correction = (
        "the capture was reversed in the ledger"
        if reversed_now
        else "the ledger had no capture left to reverse (none posted, or reversed before)"
    )
    summary = (
        f"the bank reports payment {payment_id} as {status}, never captured: {correction}; "
        f"order {payment.order_id if payment else '?'} needs a decision (collect again or cancel)"
    )
    review_file(
        kind=REVIEW_KIND,
        reference=f"uncaptured:{payment_id}",
        summary=summary,
        details={"discrepancy": discrepancy.id, "bank_status": status},
    )
    _resolve(discrepancy, f"{correction} (bank status {status}); operators told")


def _handle_bank_only(discrepancy: Discrepancy, finding: Finding) -> None:
    """The bank settled a capture we do not have as settled."""
    raw = finding.payment_id
    try:  # the bank's text: "²" passes str.isdigit() and fails int()
        payment_id = parse_id(raw)
    except ParseRefused:
        payment_id = None
    payment = (
        payment_get(payment_id=payment_id)
        if payment_id is not None and id_is_plausible(payment_id)
        else None
    )
    if payment is None:
        _escalate(
            discrepancy,
            f"the bank settled {finding.bank_amount} for {raw}, which is no "
            "payment of ours: refund it to the cardholder?",
        )
        return
    if payment.status in ("unknown", "pending"):
        try:
            outcome = payment_settle_now(payment_id=payment.id)
        except (ChannelError, DatabaseError) as exc:
            outcome = f"error: {exc}"
        payment = payment_get(payment_id=payment.id)
        if payment is not None and payment.status == "succeeded":
            _resolve(
                discrepancy,
                f"healed: payment {payment.id} confirmed from the bank's own "
                f"answer (transaction {outcome}); order paid, ledger posted",
            )
            return
    _escalate(
        discrepancy,
        f"the bank settled payment {raw} which we hold as "
        f"{payment.status if payment else 'missing'}",
    )


def reconcile_all(*, business_day: date) -> list[ReconciliationRun]:
    """Every card channel for one business day (the nightly job). A channel that fails does
    not stop the others: its run is recorded as failed and the error logged. Returns the runs
    that completed."""
    runs = []
    for channel in card_channel_codes():
        try:
            runs.append(reconcile_day(channel=channel, business_day=business_day).run)
        except SettlementUnavailable as exc:
            logger.warning("reconciliation of %s %s failed: %s", channel, business_day, exc)
        except Exception:  # logged with its traceback; the next channel still runs
            logger.exception("reconciliation of %s %s failed", channel, business_day)
    return runs


def previous_business_day(now: datetime | None = None) -> date:
    local = timezone.localtime(now or timezone.now(), ZoneInfo(settings.TIME_ZONE))
    return local.date() - timedelta(days=1)
