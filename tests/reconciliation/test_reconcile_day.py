"""Reconciling a day against the sandbox acquirer's settlement files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.orders import services as orders
from apps.orders.models import Order
from apps.payments.models import Payment, Transfer
from apps.payments.services import payment_pay, refund_create
from apps.reconciliation.models import Discrepancy, ReconciliationRun, SettlementFile, SettlementRow
from apps.reconciliation.services import reconcile_day
from apps.reconciliation.services.files import SETTLEMENT_HEADER
from shop.models import ManualReviewItem
from shop.sharding import shard_for_id
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "golden_day.json").read_text())
ALL = "__all__"
pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases=ALL)]


def _today():
    return datetime.now(UTC).date()


@pytest.fixture
def card_payments(acquirer, channels):
    """Eight captured card payments at alpha, from buyers on both shards, lowest id first."""
    sku = product_with_skus(stock=100).skus.get()
    payments = []
    for i in range(8):
        buyer = UserFactory(username=f"card{i}")
        order = orders.order_place(
            user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1 + i % 3}]
        )
        payment = payment_pay(order_id=order.id, user_id=buyer.id, method="card", channel="alpha")
        assert payment.status == "succeeded"
        payments.append(payment)
    return sorted(payments, key=lambda p: p.id)


def _symbolic(discrepancy: Discrepancy, names: dict[str, str]) -> str:
    if discrepancy.kind == "DUPLICATE":
        return f"{names[discrepancy.payment_id]}:txn"
    if discrepancy.payment_id.startswith("bank-only"):
        return "bank-only:capture"
    kind = discrepancy.key.split(":")[1]
    return f"{names[discrepancy.payment_id]}:{kind}"


def test_a_golden_day_gives_each_anomaly_exactly_its_outcome(acquirer, card_payments):
    acquirer.set_faults("alpha", settlement_anomalies=FIXTURE["anomalies"])
    names = {str(p.id): f"p{i}" for i, p in enumerate(card_payments)}

    summary = reconcile_day(channel="alpha", business_day=_today())

    found = {_symbolic(d, names): d.kind for d in Discrepancy.objects.all()}
    assert found == FIXTURE["expected"]
    run = summary.run
    assert (run.status, run.matched_count) == ("completed", FIXTURE["matched"])
    assert run.ours_count == 8
    assert run.discrepancies == {kind: 1 for kind in FIXTURE["expected"].values()}
    # A duplicate settlement is unexplained money in full; the others by their difference
    duplicate = Discrepancy.objects.get(kind="DUPLICATE")
    others = Discrepancy.objects.exclude(kind="DUPLICATE")
    assert duplicate.bank_amount > 0
    assert run.unmatched_amount == duplicate.bank_amount + sum(
        abs((d.bank_amount or 0) - (d.ours_amount or 0)) for d in others
    )
    # Nothing could be proven, so everything waits for an operator
    assert set(Discrepancy.objects.values_list("status", flat=True)) == {"open"}
    assert ManualReviewItem.objects.filter(kind="reconciliation").count() == 6
    bank_only = Discrepancy.objects.get(kind="BANK_ONLY")
    assert "refund" in bank_only.action  # no payment of ours: a refund is proposed
    assert_invariants_hold()


def test_a_clean_day_with_refunds_has_no_discrepancy(acquirer, card_payments):
    refund_create(order_id=card_payments[0].order_id, amount=100, actor="test", reason="test")
    refund_create(order_id=card_payments[0].order_id, amount=50, actor="test", reason="test")
    refund_create(
        order_id=card_payments[3].order_id,
        amount=card_payments[3].amount,
        actor="test",
        reason="test",
    )

    summary = reconcile_day(channel="alpha", business_day=_today())

    assert not Discrepancy.objects.exists()
    run = summary.run
    assert run.matched_count == 10  # 8 captures + refunds of 2 payments (summed per payment)
    assert run.bank_count == 11 and run.ours_count == 10
    assert run.ours_total == run.bank_total
    assert reconcile_day(channel="beta", business_day=_today()).run.matched_count == 0


def test_re_running_a_day_gives_the_same_result_without_duplicates(acquirer, card_payments):
    acquirer.set_faults("alpha", settlement_anomalies=FIXTURE["anomalies"])
    first = reconcile_day(channel="alpha", business_day=_today())
    snapshot = sorted(Discrepancy.objects.values_list("id", "kind", "key", "status"))
    postings = Transfer.objects.count()
    reviews = ManualReviewItem.objects.count()

    second = reconcile_day(channel="alpha", business_day=_today())

    assert sorted(Discrepancy.objects.values_list("id", "kind", "key", "status")) == snapshot
    assert Transfer.objects.count() == postings
    assert ManualReviewItem.objects.count() == reviews
    assert second.opened == 0 and first.opened == 6
    assert second.run.discrepancies == first.run.discrepancies
    assert ReconciliationRun.objects.count() == 2  # history kept
    assert SettlementFile.objects.count() == 1  # the same file content is imported once


def test_bank_only_heals_a_payment_we_left_unknown(acquirer, channels, shopper, settings):
    # Given a card payment left unknown (the bank's answers timed out)...
    sku = product_with_skus(stock=5).skus.get()
    order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel="alpha")
    assert payment.status == "unknown"
    acquirer.set_faults("alpha")
    import time

    time.sleep(1.6)
    # ...which the bank went on to capture (and lists in its settlement file)
    status, _ = acquirer.call("POST", f"/channels/alpha/payments/{payment.id}/capture", {})
    assert status == 200

    reconcile_day(channel="alpha", business_day=_today())

    discrepancy = Discrepancy.objects.get()
    assert (discrepancy.kind, discrepancy.status) == ("BANK_ONLY", "resolved")
    assert discrepancy.action.startswith("healed")
    assert Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id).status == "succeeded"
    assert Order.objects.using(shard_for_id(order.id)).get(id=order.id).status == "paid"
    assert Transfer.objects.filter(reference=f"pay-{payment.id}", kind="card_capture").exists()
    assert_invariants_hold()
    # The next run finds it matched
    assert reconcile_day(channel="alpha", business_day=_today()).run.matched_count == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "line 1: the file is empty"),
        ("id,payment,amount\n", "line 1: the header must be"),
        ("{h}\nt1,1,capture,10.50,EUR,settled,2026-11-30T10:00:00+00:00,0\n", "line 2: amount"),
        (
            "{h}\nt1,1,capture,100,EUR,settled,2026-11-30T10:00:00+00:00,0\nt2,2,sale,1,EUR,settled,2026-11-30T10:00:00+00:00,0\n",
            "line 3: type",
        ),
        ("{h}\nt1,1,capture,100,eur,settled,2026-11-30T10:00:00+00:00,0\n", "line 2: currency"),
        ("{h}\nt1,1,capture,100,EUR,settled,yesterday,0\n", "line 2: settled_at"),
        ("{h}\nt1,1,capture,100,EUR,settled,2026-11-30T10:00:00,0\n", "line 2: settled_at"),
        ("{h}\nt1,1,capture,100,EUR\n", "line 2: 5 fields"),
        ("{h}\nt1,1,capture,-5,EUR,settled,2026-11-30T10:00:00+00:00,0\n", "line 2: amount"),
    ],
)
def test_malformed_files_are_rejected_with_line_and_reason(channels, tmp_path, content, reason):
    header = SETTLEMENT_HEADER
    path = tmp_path / "day.csv"
    path.write_text(content.replace("{h}", header))
    with pytest.raises(CommandError, match=reason):
        call_command("reconcile", "--date", "2026-11-30", "--channel", "alpha", "--file", str(path))
    assert not SettlementFile.objects.exists()
    assert not SettlementRow.objects.exists()
    assert not ReconciliationRun.objects.exists()


def test_the_command_reconciles_a_given_file_and_prints_a_summary(channels, tmp_path, capsys):
    path = tmp_path / "day.csv"
    path.write_text(
        SETTLEMENT_HEADER + "\nt1,999,capture,1000,EUR,settled,2026-11-30T10:00:00+00:00,59\n"
    )
    call_command("reconcile", "--date", "2026-11-30", "--channel", "alpha", "--file", str(path))
    out = capsys.readouterr().out
    assert (
        "alpha 2026-11-30: ours 0 (0), bank 1 (1000), matched 0; discrepancies: BANK_ONLY 1" in out
    )
    with pytest.raises(CommandError):
        call_command("reconcile", "--date", "30.11.2026")
    with pytest.raises(CommandError):
        call_command("reconcile", "--date", "2026-11-30", "--channel", "nope")


def test_discrepancies_are_counted_once_and_the_open_ones_scraped(
    acquirer, card_payments, admin_client
):
    from prometheus_client import REGISTRY

    def found() -> float:
        return sum(
            REGISTRY.get_sample_value(
                "shop_reconciliation_discrepancies_found_total", {"channel": "alpha", "kind": k}
            )
            or 0
            for k in set(FIXTURE["expected"].values())
        )

    acquirer.set_faults("alpha", settlement_anomalies=FIXTURE["anomalies"])
    before = found()
    reconcile_day(channel="alpha", business_day=_today())
    reconcile_day(channel="alpha", business_day=_today())  # the same day again: nothing new

    assert found() == before + len(FIXTURE["expected"])
    text = admin_client.get("/metrics").content.decode()
    for kind in set(FIXTURE["expected"].values()):
        expected = list(FIXTURE["expected"].values()).count(kind)
        assert f'shop_reconciliation_discrepancies_open{{kind="{kind}"}} {float(expected)}' in text
    assert 'shop_reconciliation_last_run_timestamp_seconds{channel="alpha",status="completed"}' in (
        text
    )


def test_each_discrepancy_gets_its_own_review_item_however_long_its_key(channels, tmp_path):
    # Given a file with two unknown payments whose ids differ only after 90 characters
    prefix = "bank-ref-" + "x" * 90
    path = tmp_path / "day.csv"
    path.write_text(
        SETTLEMENT_HEADER + "\n"
        f"t1,{prefix}1,capture,1000,EUR,settled,2026-11-30T10:00:00+00:00,59\n"
        f"t2,{prefix}2,capture,2000,EUR,settled,2026-11-30T11:00:00+00:00,88\n"
    )
    command = ["reconcile", "--date", "2026-11-30", "--channel", "alpha", "--file", str(path)]

    call_command(*command)

    # Then each discrepancy is escalated on its own, pointing at itself
    discrepancies = list(Discrepancy.objects.order_by("id"))
    assert [d.bank_amount for d in discrepancies] == [1000, 2000]
    items = ManualReviewItem.objects.filter(kind="reconciliation")
    assert sorted(item.details["discrepancy"] for item in items) == [d.id for d in discrepancies]
    # and a re-run files nothing new
    call_command(*command)
    assert ManualReviewItem.objects.filter(kind="reconciliation").count() == 2
