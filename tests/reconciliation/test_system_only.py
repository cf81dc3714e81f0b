"""SYSTEM_ONLY captures: we booked a capture the bank's file lacks. Money moves back only when
the bank proves no capture happened, and then by exactly what the capture posted."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db.models import F

from apps.orders import services as orders
from apps.payments.models import Entry, PaymentChannel, Transfer
from apps.payments.services import payment_pay
from apps.payments.services.ledger import card_capture_reversal
from apps.reconciliation.models import Discrepancy
from apps.reconciliation.services import reconcile_day
from apps.reconciliation.services.files import SETTLEMENT_HEADER
from shop.models import ManualReviewItem
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import assert_invariants_hold
from tests.payments.acquirer_process import SandboxAcquirer

pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases="__all__")]

HEADER = SETTLEMENT_HEADER + "\n"


def _today():
    return datetime.now(UTC).date()


@pytest.fixture
def captured(acquirer, channels, shopper):
    """A card payment at alpha, captured by the bank and posted in our ledger."""
    sku = product_with_skus(stock=5).skus.get()
    order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel="alpha")
    assert payment.status == "succeeded"
    return payment


@pytest.fixture
def other_bank(settings):
    """A second sandbox acquirer with no memory of the shop's payments: pointing the shop at
    it plays a bank whose records lack our capture."""
    bank = SandboxAcquirer(secret=django_settings.ACQUIRER_WEBHOOK_SECRET, seed=11).start()
    yield bank
    bank.close()


def _entries(transfer: Transfer) -> dict[tuple[int, str], int]:
    return {(e.account_id, e.bucket): e.amount for e in transfer.entries.all()}


def _authorize(bank: SandboxAcquirer, payment) -> None:
    status, body = bank.call(
        "POST",
        "/channels/alpha/payments/authorize",
        {"payment_id": str(payment.id), "amount": payment.amount, "currency": payment.currency},
    )
    assert status == 200, body


@pytest.mark.parametrize("bank_state", ["not_found", "authorized", "voided", "declined"])
def test_a_capture_the_bank_never_made_is_reversed_once_by_its_own_entries(
    captured, other_bank, settings, bank_state
):
    # Given the bank holds our captured payment as never captured...
    if bank_state == "declined":
        other_bank.set_faults("alpha", decline_rate=1.0)
    if bank_state != "not_found":
        _authorize(other_bank, captured)
    if bank_state == "voided":
        assert other_bank.call("POST", f"/channels/alpha/payments/{captured.id}/void", {})[0] == 200
    assert other_bank.payment("alpha", str(captured.id))["status"] == bank_state
    settings.ACQUIRER_URL = other_bank.url
    # ...and the channel's fee changed since the capture was posted
    PaymentChannel.objects.filter(code="alpha").update(
        fee_bps=F("fee_bps") + 500, fee_fixed=F("fee_fixed") + 7
    )
    capture = Transfer.objects.get(kind="card_capture", reference=f"pay-{captured.id}")

    reconcile_day(channel="alpha", business_day=_today())

    # Then the reversal is exactly the capture's entries negated: the fee posted then
    reversal = Transfer.objects.get(kind="card_capture_reversal", reference=f"pay-{captured.id}")
    assert _entries(reversal) == {key: -amount for key, amount in _entries(capture).items()}
    discrepancy = Discrepancy.objects.get(kind="SYSTEM_ONLY")
    assert discrepancy.status == "resolved" and "reversed in the ledger" in discrepancy.action
    item = ManualReviewItem.objects.get(reference=f"uncaptured:{captured.id}")
    assert item.details["bank_status"] == bank_state
    assert_invariants_hold()

    # A re-run, or another reversal of the same capture, posts nothing
    postings, entries = Transfer.objects.count(), Entry.objects.count()
    reconcile_day(channel="alpha", business_day=_today())
    assert card_capture_reversal(capture_reference=f"pay-{captured.id}") is False
    assert (Transfer.objects.count(), Entry.objects.count()) == (postings, entries)
    assert_invariants_hold()


def test_reversing_a_capture_that_was_never_posted_posts_nothing(channels):
    assert card_capture_reversal(capture_reference="pay-404") is False
    assert not Transfer.objects.exists() and not Entry.objects.exists()


class _OddBank:
    """A bank that settles nothing and answers every status query with one fixed reply:
    answers the sandbox never gives, so we see what the shop does with them."""

    def __init__(self, status: int, body: bytes) -> None:
        reply = (status, body)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, data = (200, HEADER.encode()) if "/settlements/" in self.path else reply
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"status": "pending"}).encode(),
        json.dumps({"status": None}).encode(),
        json.dumps({"payment_id": "1"}).encode(),  # no status at all
        json.dumps(["voided"]).encode(),  # not an object
        b"maintenance window",  # not JSON
    ],
)
def test_an_answer_that_proves_nothing_moves_no_money_and_goes_to_an_operator(
    captured, settings, body
):
    # Given a bank whose file lacks our capture and whose status answer proves nothing
    bank = _OddBank(200, body)
    settings.ACQUIRER_URL = bank.url
    ledger_before = sorted(Entry.objects.values_list("transfer_id", "account_id", "amount"))
    try:
        summary = reconcile_day(channel="alpha", business_day=_today())
    finally:
        bank.close()

    # Then no money moved, and an operator has it
    assert summary.run.status == "completed"
    assert sorted(Entry.objects.values_list("transfer_id", "account_id", "amount")) == (
        ledger_before
    )
    assert not Transfer.objects.filter(kind="card_capture_reversal").exists()
    discrepancy = Discrepancy.objects.get(kind="SYSTEM_ONLY")
    assert discrepancy.status == "open" and "proves nothing" in discrepancy.action
    item = ManualReviewItem.objects.get(kind="reconciliation")
    assert item.details["discrepancy"] == discrepancy.id
    assert not ManualReviewItem.objects.filter(reference__startswith="uncaptured:").exists()
    assert_invariants_hold()
