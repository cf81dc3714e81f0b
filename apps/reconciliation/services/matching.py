"""The matching engine: a merge join of two sorted streams.

Our side comes from every order shard through server-side cursors merged in (payment id, type)
order; the bank's side comes from the imported rows through a server-side cursor in the same
order. Only one group per side is in memory at a time, so memory stays flat however large the
day is. Money is compared in integer minor units only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby

from apps.reconciliation.models import Outcome, SettlementFile, SettlementRow
from apps.reconciliation.services.files import sort_key

SETTLED = "settled"
CHUNK = 5000


@dataclass(frozen=True)
class Ours:
    payment_id: str
    type: str
    amount: int
    currency: str

    @property
    def key(self) -> tuple[str, str]:
        return sort_key(self.payment_id), self.type


@dataclass(frozen=True)
class BankGroup:
    """The bank's rows for one payment and type (several for refunds, or for duplicates)."""

    payment_id: str
    type: str
    rows: list[tuple[str, int, str, str]]  # (transaction id, amount, currency, status)

    @property
    def key(self) -> tuple[str, str]:
        return sort_key(self.payment_id), self.type


@dataclass(frozen=True)
class Finding:
    outcome: str
    key: str
    payment_id: str
    type: str
    ours: Ours | None
    bank_amount: int | None = None
    bank_currency: str = ""
    bank_status: str = ""

    @property
    def unmatched_amount(self) -> int:
        """Money this finding leaves unexplained: all of a duplicate settlement (the bank paid
        it twice; that it matches ours is the point), otherwise the difference."""
        if self.outcome == Outcome.DUPLICATE:
            return abs(self.bank_amount or 0)
        return abs((self.bank_amount or 0) - (self.ours.amount if self.ours else 0))


@dataclass
class Tally:
    ours_count: int = 0
    ours_total: int = 0
    bank_count: int = 0
    bank_total: int = 0
    matched: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    unmatched_amount: int = 0


def bank_groups(settlement: SettlementFile) -> Iterator[BankGroup]:
    rows = (
        SettlementRow.objects.filter(file=settlement)
        .order_by("sort_key", "type", "line_no")
        .values_list("payment_id", "type", "channel_transaction_id", "amount", "currency", "status")
        .iterator(chunk_size=CHUNK)
    )
    for (payment_id, kind), group in groupby(rows, key=lambda r: (r[0], r[1])):
        yield BankGroup(
            payment_id, kind, [(txn, amount, cur, st) for _, _, txn, amount, cur, st in group]
        )


def _compare(ours: Ours, bank: BankGroup) -> list[Finding]:
    findings: list[Finding] = []
    key = f"{ours.payment_id}:{ours.type}"
    distinct: dict[str, tuple[str, int, str, str]] = {}
    for row in bank.rows:
        if row[0] in distinct:
            findings.append(
                Finding(
                    Outcome.DUPLICATE,
                    f"txn:{row[0]}",
                    ours.payment_id,
                    ours.type,
                    ours,
                    row[1],
                    row[2],
                    row[3],
                )
            )
        else:
            distinct[row[0]] = row
    rows = list(distinct.values())
    amount = sum(row[1] for row in rows)
    currencies = {row[2] for row in rows}
    statuses = {row[3] for row in rows}
    currency = currencies.pop() if len(currencies) == 1 else ",".join(sorted(currencies))
    status = statuses.pop() if len(statuses) == 1 else ",".join(sorted(statuses))
    if currency != ours.currency:
        outcome = Outcome.CURRENCY_MISMATCH
    elif amount != ours.amount:
        outcome = Outcome.AMOUNT_MISMATCH
    elif status != SETTLED:
        outcome = Outcome.STATUS_MISMATCH
    else:
        outcome = Outcome.MATCHED
    findings.append(
        Finding(outcome, key, ours.payment_id, ours.type, ours, amount, currency, status)
    )
    return findings


def match(ours: Iterable[Ours], bank: Iterable[BankGroup], tally: Tally) -> Iterator[Finding]:
    """Every finding (MATCHED included) in key order; ``tally`` accumulates the counts."""
    ours_iter, bank_iter = iter(ours), iter(bank)
    mine, theirs = next(ours_iter, None), next(bank_iter, None)
    while mine is not None or theirs is not None:
        if theirs is None or (mine is not None and mine.key < theirs.key):
            tally.ours_count += 1
            tally.ours_total += mine.amount
            yield Finding(
                Outcome.SYSTEM_ONLY,
                f"{mine.payment_id}:{mine.type}",
                mine.payment_id,
                mine.type,
                mine,
            )
            mine = next(ours_iter, None)
        elif mine is None or theirs.key < mine.key:
            tally.bank_count += len(theirs.rows)
            tally.bank_total += sum(row[1] for row in theirs.rows)
            first = theirs.rows[0]
            yield Finding(
                Outcome.BANK_ONLY,
                f"{theirs.payment_id}:{theirs.type}",
                theirs.payment_id,
                theirs.type,
                None,
                sum(r[1] for r in theirs.rows),
                first[2],
                first[3],
            )
            theirs = next(bank_iter, None)
        else:
            tally.ours_count += 1
            tally.ours_total += mine.amount
            tally.bank_count += len(theirs.rows)
            tally.bank_total += sum(row[1] for row in theirs.rows)
            yield from _compare(mine, theirs)
            mine, theirs = next(ours_iter, None), next(bank_iter, None)
