"""Properties of the settlement-file parser: any bytes or text give validated rows or
SettlementFileInvalid naming a line — never another exception (docs/input-limits.md)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.reconciliation.exceptions import SettlementFileInvalid
from apps.reconciliation.services.files import (
    FIELD_MAX_CHARS,
    SETTLEMENT_HEADER,
    parse_row,
    parse_rows,
    settlement_lines,
)
from shop.parsing import INT64_MAX

PROPERTY = settings(max_examples=300, deadline=None)

field_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Nd", "No", "Lu", "Cc"]), max_size=25),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["capture", "refund", "EUR", "settled", "2026-11-30T10:00:00+00:00", "ÄÖÜ"]),
)


def _is_valid(row) -> bool:
    return (
        row.type in ("capture", "refund")
        and 0 <= row.amount <= INT64_MAX
        and 0 <= row.fee <= INT64_MAX
        and len(row.currency) == 3
        and row.currency.isascii()
        and row.currency.isupper()
        and row.settled_at.tzinfo is not None
        and all(
            len(value) <= FIELD_MAX_CHARS and value.isprintable()
            for value in (row.channel_transaction_id, row.payment_id, row.status)
        )
    )


@PROPERTY
@given(st.lists(field_text, min_size=0, max_size=10), st.integers(min_value=2, max_value=10**6))
def test_a_record_is_a_valid_row_or_refused_naming_its_line(fields, line_no):
    try:
        row = parse_row(fields, line_no)
    except SettlementFileInvalid as exc:
        assert exc.message.startswith(f"line {line_no}: ")
        assert exc.extra["line"] == line_no
        return
    assert _is_valid(row) and row.line_no == line_no


@PROPERTY
@given(st.lists(st.text(max_size=120), max_size=6))
def test_any_lines_of_text_are_rows_or_one_refusal(lines):
    text_lines = [SETTLEMENT_HEADER + "\n", *(line + "\n" for line in lines)]
    try:
        rows = list(parse_rows(text_lines))
    except SettlementFileInvalid as exc:
        assert exc.message.startswith("line ")
        return
    assert all(_is_valid(row) for row in rows)


@PROPERTY
@given(st.binary(max_size=2000))
def test_any_bytes_are_lines_or_one_refusal(raw):
    try:
        rows = list(parse_rows(settlement_lines(io.BytesIO(raw))))
    except SettlementFileInvalid as exc:
        assert exc.message.startswith("line ")
        return
    assert all(_is_valid(row) for row in rows)


@PROPERTY
@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=',"'),
        min_size=1,
        max_size=FIELD_MAX_CHARS,
    ),
    st.integers(min_value=1, max_value=INT64_MAX),
    st.sampled_from(["capture", "refund"]),
    st.integers(min_value=0, max_value=INT64_MAX),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3),
    st.datetimes(
        timezones=st.just(UTC), min_value=datetime(2000, 1, 1), max_value=datetime(9000, 1, 1)
    ),
    st.integers(min_value=0, max_value=INT64_MAX),
    st.booleans(),
)
def test_valid_rows_round_trip(txn, payment_id, kind, amount, currency, settled_at, fee, bom):
    line = ",".join(
        [
            txn,
            str(payment_id),
            kind,
            str(amount),
            currency,
            "settled",
            settled_at.isoformat(),
            str(fee),
        ]
    )
    raw = (("\ufeff" if bom else "") + SETTLEMENT_HEADER + "\r\n" + line + "\r\n").encode()
    [row] = list(parse_rows(settlement_lines(io.BytesIO(raw))))
    assert (row.channel_transaction_id, row.payment_id, row.type) == (txn, str(payment_id), kind)
    assert (row.amount, row.currency, row.settled_at, row.fee) == (
        amount,
        currency,
        settled_at,
        fee,
    )
