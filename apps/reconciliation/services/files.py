"""Settlement files: one documented CSV format, validated line by line, imported all or
nothing, streamed (a file of any size is never held in memory whole).

Format (UTF-8, a byte-order mark allowed; comma-separated; header line required, in this column
order — SETTLEMENT_HEADER):

    channel_transaction_id,payment_id,type,amount,currency,status,settled_at,fee

* ``channel_transaction_id`` — the bank's id of the movement (non-empty, ≤ 128 characters)
* ``payment_id`` — our payment id (the shop's idempotency key at the bank; ≤ 128 characters)
* ``type`` — ``capture`` or ``refund``
* ``amount``, ``fee`` — whole non-negative numbers of minor units (cents), ASCII digits, at most
  2**63-1 (the ``bigint`` column); never decimals
* ``currency`` — ISO 4217: three ASCII capital letters
* ``status`` — the bank's status of the movement (``settled`` when all is well; ≤ 20 characters)
* ``settled_at`` — ISO 8601 date and time with a UTC offset (``2026-11-30T12:00:00+00:00``)

No field is longer than FIELD_MAX_CHARS or holds a control character (NUL, a tab, a newline
inside quotes...). Every refusal names the line and the field (docs/input-limits.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import IO

from django.conf import settings
from django.db import connection, transaction

from apps.reconciliation.exceptions import SettlementFileInvalid, SettlementUnavailable
from apps.reconciliation.models import SettlementFile, SettlementRow
from shop.http import HttpError, http_json
from shop.parsing import INT64_MAX, ParseRefused, parse_amount

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
#: The header line of a settlement file (the sandbox acquirer writes the same columns).
SETTLEMENT_HEADER = ",".join(COLUMNS)
TYPES = ("capture", "refund")
BATCH = 5000
#: Longest field accepted: the id columns are varchar(128) and every other column is shorter;
#: a longer field is refused by name rather than truncated or sent to the database.
FIELD_MAX_CHARS = 128
#: Longest line accepted: every field at its longest, quoted, UTF-8 (≤ 4 bytes a character),
#: with separators. Checked before the csv module reads the line (its own limit, 131,072
#: characters a field, raises csv.Error), and bounds what one line makes the importer hold.
LINE_MAX_BYTES = len(COLUMNS) * (FIELD_MAX_CHARS * 4 + 3) + 2
_STATUS_MAX_CHARS = SettlementRow._meta.get_field("status").max_length
_CURRENCY = re.compile(r"[A-Z]{3}")
# C0 and C1 control characters and DEL: no field of a settlement holds one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def sort_key(payment_id: str) -> str:
    """The merge order both sides share: numeric ids zero-padded (so they sort as numbers),
    anything else after them as written."""
    numeric = payment_id.isascii() and payment_id.isdigit()
    return payment_id.zfill(20) if numeric else f"~{payment_id}"


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


def _shown(value: str) -> str:
    """A field as quoted in an error message: short, whatever its length."""
    return repr(value[:40] + "…") if len(value) > 40 else repr(value)


def _refuse(line_no: int, field: str | None, why: str) -> SettlementFileInvalid:
    where = f"line {line_no}: {field} " if field else f"line {line_no}: "
    extra = {"line": line_no, "reason": why[:200]}
    if field:
        extra["field"] = field
    return SettlementFileInvalid(where + why, extra=extra)


def settlement_lines(stream: IO[bytes]) -> Iterator[str]:
    """The lines of an uploaded or local file, decoded strictly as UTF-8, each at most
    LINE_MAX_BYTES (a byte-order mark is dropped by parse_rows). Raises SettlementFileInvalid
    naming the line of the first undecodable or over-long one — while streaming, so the import
    that consumes these lines rolls back."""
    line_no = 0
    while True:
        raw = stream.readline(LINE_MAX_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw.rstrip(b"\r\n")) > LINE_MAX_BYTES:
            raise _refuse(line_no, None, f"the line is longer than {LINE_MAX_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _refuse(
                line_no,
                None,
                f"not UTF-8 text (byte {exc.start + 1} of the line); the file must be UTF-8 "
                "(UTF-16 and Latin-1 exports are refused)",
            ) from exc
        yield text


def _bounded(lines: Iterable[str]) -> Iterator[str]:
    """Lines from any source (a fetched body too) checked for length before csv reads them;
    a UTF-8 byte-order mark before the header is dropped."""
    for line_no, line in enumerate(lines, start=1):
        if len(line.rstrip("\r\n")) > LINE_MAX_BYTES:
            raise _refuse(line_no, None, f"the line is longer than {LINE_MAX_BYTES} characters")
        yield line.removeprefix("\ufeff") if line_no == 1 else line


def _whole(value: str, name: str, line_no: int) -> int:
    try:
        return parse_amount(value)
    except ParseRefused as exc:
        raise _refuse(
            line_no,
            name,
            f"{_shown(value)} is not a whole non-negative number of minor units "
            f"(ASCII digits, at most {INT64_MAX})",
        ) from exc


def _settled_at(value: str, line_no: int) -> datetime:
    try:
        when = datetime.fromisoformat(value)
        if when.tzinfo is not None:
            when.astimezone(UTC)  # 9999-12-31T23:00-05:00 is past datetime.max in UTC
    except (ValueError, OverflowError):
        when = None
    if when is None or when.tzinfo is None:
        raise _refuse(line_no, "settled_at", f"{_shown(value)} is not an ISO date-time with offset")
    return when


def parse_row(fields: list[str], line_no: int) -> ParsedRow:
    """One record of a settlement file, or SettlementFileInvalid naming the line and field."""
    if len(fields) != len(COLUMNS):
        raise _refuse(line_no, None, f"{len(fields)} fields, expected {len(COLUMNS)}")
    values = dict(zip(COLUMNS, (f.strip() for f in fields), strict=True))
    for name, value in values.items():
        if len(value) > FIELD_MAX_CHARS:
            raise _refuse(line_no, name, f"is longer than {FIELD_MAX_CHARS} characters")
        if _CONTROL.search(value):
            raise _refuse(line_no, name, f"{_shown(value)} holds a control character")
    for name in ("channel_transaction_id", "payment_id"):
        if not values[name]:
            raise _refuse(line_no, name, "is missing")
    if values["type"] not in TYPES:
        raise _refuse(line_no, "type", f"{_shown(values['type'])} is neither capture nor refund")
    amount = _whole(values["amount"], "amount", line_no)
    if not _CURRENCY.fullmatch(values["currency"]):
        raise _refuse(
            line_no,
            "currency",
            f"{_shown(values['currency'])} is not an ISO code (three ASCII capital letters)",
        )
    if not values["status"] or len(values["status"]) > _STATUS_MAX_CHARS:
        raise _refuse(line_no, "status", f"is missing or longer than {_STATUS_MAX_CHARS}")
    return ParsedRow(
        line_no,
        values["channel_transaction_id"],
        values["payment_id"],
        values["type"],
        amount,
        values["currency"],
        values["status"],
        _settled_at(values["settled_at"], line_no),
        _whole(values["fee"], "fee", line_no),
    )


def parse_rows(lines: Iterable[str]) -> Iterator[ParsedRow]:
    """Validated rows; SettlementFileInvalid names the first bad line (and field) and why."""
    reader = csv.reader(_bounded(lines), strict=True)  # a stray or unclosed quote is refused
    try:
        header = next(reader, None)
        if header is None:
            raise _refuse(1, None, "the file is empty")
        if [h.strip() for h in header] != COLUMNS:
            raise _refuse(1, None, f"the header must be {SETTLEMENT_HEADER}")
        for index, fields in enumerate(reader, start=2):
            if fields:
                yield parse_row(fields, index)
    except csv.Error as exc:  # e.g. a quote left open to the end of the file
        raise _refuse(reader.line_num, None, f"not CSV ({exc})") from exc


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
