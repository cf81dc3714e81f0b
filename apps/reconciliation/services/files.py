"""Settlement files: one documented CSV format, validated line by line, imported all or
nothing, streamed (a file of any size is never held in memory whole).

Format (UTF-8, comma-separated, header line required, in this column order):

    channel_transaction_id,payment_id,type,amount,currency,status,settled_at,fee

* ``channel_transaction_id`` — the bank's id of the movement (non-empty, ≤ 128 characters)
* ``payment_id`` — our payment id (the shop's idempotency key at the bank; ≤ 128 characters)
* ``type`` — ``capture`` or ``refund``
* ``amount``, ``fee`` — whole non-negative numbers of minor units (cents); never decimals
* ``currency`` — ISO 4217, three capital letters
* ``status`` — the bank's status of the movement (``settled`` when all is well)
* ``settled_at`` — ISO 8601 date and time with a UTC offset (``2026-11-30T12:00:00+00:00``)
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.db import connection, transaction

from apps.reconciliation.exceptions import SettlementFileInvalid, SettlementUnavailable
from apps.reconciliation.models import SettlementFile, SettlementRow
from shop.http import HttpError, http_json

COLUMNS = [
    "channel_transaction_id",
    "payment_id",
    "type",
    "amount",
    "currency",
    "status",
    "settled_at",
    "fee",
]
TYPES = ("capture", "refund")
BATCH = 5000


def sort_key(payment_id: str) -> str:
    """The merge order both sides share: numeric ids zero-padded (so they sort as numbers),
    anything else after them as written."""
    return payment_id.zfill(20) if payment_id.isdigit() else f"~{payment_id}"


@dataclass(frozen=True)
class ParsedRow:
    line_no: int
    channel_transaction_id: str
    payment_id: str
    type: str
    amount: int
    currency: str
    status: str
    settled_at: datetime
    fee: int


def _whole(value: str, name: str, line_no: int) -> int:
    if not value.isdigit():
        raise SettlementFileInvalid(
            f"line {line_no}: {name} {value!r} is not a whole non-negative number of minor units",
            extra={"line": line_no, "reason": f"bad {name}"},
        )
    return int(value)


def parse_rows(lines: Iterable[str]) -> Iterator[ParsedRow]:
    """Validated rows; SettlementFileInvalid names the first bad line and why."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        raise SettlementFileInvalid("line 1: the file is empty", extra={"line": 1})
    if [h.strip() for h in header] != COLUMNS:
        raise SettlementFileInvalid(
            f"line 1: the header must be {','.join(COLUMNS)}", extra={"line": 1}
        )
    for index, fields in enumerate(reader, start=2):
        if not fields:
            continue
        if len(fields) != len(COLUMNS):
            raise SettlementFileInvalid(
                f"line {index}: {len(fields)} fields, expected {len(COLUMNS)}",
                extra={"line": index},
            )
        txn, payment_id, kind, amount, currency, status, settled_at, fee = (
            f.strip() for f in fields
        )
        if not txn or len(txn) > 128 or not payment_id or len(payment_id) > 128:
            raise SettlementFileInvalid(
                f"line {index}: missing or too long transaction or payment id",
                extra={"line": index},
            )
        if kind not in TYPES:
            raise SettlementFileInvalid(
                f"line {index}: type {kind!r} is neither capture nor refund", extra={"line": index}
            )
        if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
            raise SettlementFileInvalid(
                f"line {index}: currency {currency!r} is not an ISO code", extra={"line": index}
            )
        if not status or len(status) > 20:
            raise SettlementFileInvalid(f"line {index}: missing status", extra={"line": index})
        try:
            when = datetime.fromisoformat(settled_at)
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise SettlementFileInvalid(
                f"line {index}: settled_at {settled_at!r} is not an ISO date-time with offset",
                extra={"line": index},
            )
        yield ParsedRow(
            index,
            txn,
            payment_id,
            kind,
            _whole(amount, "amount", index),
            currency,
            status,
            when,
            _whole(fee, "fee", index),
        )


class _Hashing:
    """Lines passed through while their bytes are hashed."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = lines
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[str]:
        for line in self.lines:
            self.digest.update(line.encode())
            yield line


@transaction.atomic(using="default")
def settlement_import(
    *, channel: str, business_day: date, lines: Iterable[str], source: str, actor: str = ""
) -> SettlementFile:
    """Import one file, all or nothing: any bad line raises SettlementFileInvalid and leaves
    no trace. Re-importing the same content for the same channel and day returns the file
    already imported (no duplicate rows)."""
    hashing = _Hashing(lines)
    settlement = SettlementFile.objects.create(
        channel=channel, business_day=business_day, source=source, sha256="", imported_by=actor
    )
    count = 0
    batch: list[SettlementRow] = []
    for row in parse_rows(hashing):
        batch.append(
            SettlementRow(
                file=settlement,
                line_no=row.line_no,
                channel_transaction_id=row.channel_transaction_id,
                payment_id=row.payment_id,
                sort_key=sort_key(row.payment_id),
                type=row.type,
                amount=row.amount,
                currency=row.currency,
                status=row.status,
                settled_at=row.settled_at,
                fee=row.fee,
            )
        )
        if len(batch) >= BATCH:
            _insert(batch)
            count += len(batch)
            batch = []
    _insert(batch)
    count += len(batch)
    digest = hashing.digest.hexdigest()
    same = (
        SettlementFile.objects.filter(channel=channel, business_day=business_day, sha256=digest)
        .exclude(id=settlement.id)
        .order_by("id")
        .first()
    )
    if same is not None:
        transaction.set_rollback(True)  # identical content: keep the first import only
        return same
    settlement.sha256, settlement.row_count = digest, count
    settlement.save(update_fields=["sha256", "row_count"])
    return settlement


_COPY_COLUMNS = (
    "file_id",
    "line_no",
    "channel_transaction_id",
    "payment_id",
    "sort_key",
    "type",
    "amount",
    "currency",
    "status",
    "settled_at",
    "fee",
)


def _insert(batch: list[SettlementRow]) -> None:
    if not batch:
        return
    if connection.vendor != "postgresql":
        SettlementRow.objects.bulk_create(batch)
        return
    # COPY: an order of magnitude faster than INSERTs for the million-row days.
    table = SettlementRow._meta.db_table
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {table} ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as copy,
    ):
        for row in batch:
            copy.write_row(
                (
                    row.file_id,
                    row.line_no,
                    row.channel_transaction_id,
                    row.payment_id,
                    row.sort_key,
                    row.type,
                    row.amount,
                    row.currency,
                    row.status,
                    row.settled_at,
                    row.fee,
                )
            )


def settlement_fetch(*, channel: str, business_day: date) -> SettlementFile:
    """Fetch and import the channel's file for the day from the acquirer."""
    url = (
        f"{settings.ACQUIRER_URL.rstrip('/')}/settlements/{channel}/{business_day.isoformat()}.csv"
    )
    try:
        response = http_json(
            "GET",
            url,
            connect_timeout=settings.CHANNEL_CONNECT_TIMEOUT,
            read_timeout=settings.SETTLEMENT_FETCH_TIMEOUT,
        )
    except HttpError as exc:
        raise SettlementUnavailable(f"{channel} {business_day}: {exc}") from exc
    if response.status != 200 or not isinstance(response.body, str):
        raise SettlementUnavailable(f"{channel} {business_day}: HTTP {response.status}")
    return settlement_import(
        channel=channel,
        business_day=business_day,
        lines=io.StringIO(response.body),
        source=SettlementFile.Source.FETCHED,
        actor="reconciliation",
    )
