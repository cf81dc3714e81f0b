"""Settlement files from operators (admin upload) and the command line: any bytes are either
imported whole or refused with a form error naming the line and the field — never a 500, never
a partial import (docs/input-limits.md)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from apps.reconciliation.models import (
    Discrepancy,
    ReconciliationRun,
    SettlementFile,
    SettlementRow,
)
from apps.reconciliation.services.files import FIELD_MAX_CHARS, SETTLEMENT_HEADER
from shop.models import ManualReviewItem
from tests.factories.users import UserFactory

pytestmark = pytest.mark.django_db(databases="__all__")

UPLOAD = "/admin/reconciliation/settlementfile/upload/"
GOOD = "t1,999,capture,1000,EUR,settled,2026-11-30T10:00:00+00:00,59"


def row(**fields: str) -> str:
    """GOOD with some fields replaced."""
    values = dict(
        zip(SETTLEMENT_HEADER.split(","), GOOD.split(","), strict=True),
        channel_transaction_id="t2",
    )
    values.update(fields)
    return ",".join(values.values())


@pytest.fixture
def operator(client, channels):
    client.force_login(UserFactory(username="recon-op", is_staff=True, is_superuser=True))
    return client


def _upload(client, content: bytes):
    return client.post(
        UPLOAD,
        {
            "channel": "alpha",
            "business_day": "2026-11-30",
            "file": SimpleUploadedFile("day.csv", content, content_type="text/csv"),
        },
    )


def _nothing_imported() -> None:
    assert not SettlementFile.objects.exists()
    assert not SettlementRow.objects.exists()
    assert not ReconciliationRun.objects.exists()


def _file_error(response) -> str:
    assert response.status_code == 200, response.status_code
    errors = response.context["form"].errors["file"]
    assert len(errors) == 1 and errors[0].endswith("nothing was imported."), errors
    return errors[0]


def csv_file(*lines: str, encoding: str = "utf-8") -> bytes:
    return "".join(line + "\n" for line in (SETTLEMENT_HEADER, *lines)).encode(encoding)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # not UTF-8: a UTF-16 export (with its byte-order mark), a Latin-1 one
        (csv_file(GOOD, encoding="utf-16"), "line 1: not UTF-8"),
        (csv_file(row(status="réglé"), encoding="latin-1"), "line 2: not UTF-8"),
        # amounts: a Unicode digit, past bigint, past int()'s digit limit, a decimal
        (csv_file(GOOD, row(amount="²")), "line 3: amount '²'"),
        (csv_file(row(amount=str(10**30))), "line 2: amount"),
        (csv_file(row(amount=str(2**63))), "line 2: amount"),
        (csv_file(row(amount="1" * 5000)), "line 2: the line is longer"),
        (csv_file(row(amount="12.50")), "line 2: amount"),
        (csv_file(row(fee="٣")), "line 2: fee"),
        # a 200 KB field; a field just over the bound
        (csv_file(row(status="x" * 200_000)), "line 2: the line is longer"),
        (
            csv_file(row(payment_id="9" * (FIELD_MAX_CHARS + 1))),
            f"line 2: payment_id is longer than {FIELD_MAX_CHARS}",
        ),
        # control characters: NUL, ESC, a newline inside quotes
        (csv_file(row(status="sett\x00led")), "line 2: status"),
        (csv_file(row(payment_id="99\x1b9")), "line 2: payment_id"),
        (csv_file(row(channel_transaction_id='"t\n2"')), "line 2: channel_transaction_id"),
        # currency: ISO 4217, three ASCII capitals
        (csv_file(row(currency="ÄÖÜ")), "line 2: currency 'ÄÖÜ'"),
        (csv_file(row(currency="ＥＵＲ")), "line 2: currency"),
        # a date-time that cannot be stored (past datetime.max in UTC)
        (csv_file(row(settled_at="9999-12-31T23:00:00-05:00")), "line 2: settled_at"),
        # not CSV: a quote left open to the end of the file, a stray quote
        (csv_file(GOOD, 't3,"998,capture'), "line 3: not CSV"),
        (
            csv_file('"t3"x,998,capture,1,EUR,settled,2026-11-30T10:00:00+00:00,0'),
            "line 2: not CSV",
        ),
    ],
)
def test_a_bad_upload_is_refused_naming_the_line_and_imports_nothing(operator, content, expected):
    # When an operator uploads a file with one bad line among good ones
    response = _upload(operator, content)
    # Then the form says which line (and field) and why, and nothing was imported
    assert expected in _file_error(response)
    _nothing_imported()


def test_an_upload_with_a_utf8_byte_order_mark_is_imported(operator):
    # Given a spreadsheet's "CSV UTF-8" export, which starts with a byte-order mark
    content = ("\ufeff" + SETTLEMENT_HEADER + "\r\n" + GOOD + "\r\n").encode()
    # When it is uploaded, then it is imported and reconciled like any other
    response = _upload(operator, content)
    assert response.status_code == 302
    assert SettlementRow.objects.get().payment_id == "999"
    assert ReconciliationRun.objects.get().discrepancies == {"BANK_ONLY": 1}


def test_a_payment_id_that_is_no_number_of_ours_is_a_bank_only_row_for_operators(operator):
    # Given a settled row whose payment id only looks like digits ("²" passes str.isdigit)
    content = f"{SETTLEMENT_HEADER}\n{row(payment_id='²')}\n{row(payment_id='1' * 128)}\n"
    # When it is uploaded, then it is imported, matched to nothing, and sent to operators
    response = _upload(operator, content.encode())
    assert response.status_code == 302
    assert ReconciliationRun.objects.get().discrepancies == {"BANK_ONLY": 2}
    assert Discrepancy.objects.count() == 2
    assert ManualReviewItem.objects.filter(kind="reconciliation").count() == 2


def test_a_refused_line_after_thousands_of_good_ones_imports_none_of_them(operator):
    good = "".join(
        row(channel_transaction_id=f"t{i}", payment_id=str(i)) + "\n" for i in range(6000)
    )
    content = f"{SETTLEMENT_HEADER}\n{good}{row(currency='eur')}\n".encode()
    assert "line 6002: currency" in _file_error(_upload(operator, content))
    _nothing_imported()


def test_the_command_refuses_a_file_that_is_not_utf8(channels, tmp_path):
    path = tmp_path / "day.csv"
    path.write_bytes((SETTLEMENT_HEADER + "\n" + GOOD + "\n").encode("utf-16"))
    with pytest.raises(CommandError, match="line 1: not UTF-8"):
        call_command("reconcile", "--date", "2026-11-30", "--channel", "alpha", "--file", str(path))
    _nothing_imported()
