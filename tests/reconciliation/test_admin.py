"""Operators' reconciliation pages: upload, the workflow, CSV export, the chart."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.reconciliation.models import Discrepancy, ReconciliationRun, SettlementFile
from apps.reconciliation.services.files import SETTLEMENT_HEADER
from shop.models import ManualReviewItem
from tests.factories.users import UserFactory

pytestmark = pytest.mark.django_db(databases="__all__")

CSV = (
    SETTLEMENT_HEADER + "\n"
    "t1,999,capture,1000,EUR,settled,2026-11-30T10:00:00+00:00,59\n"
    "t2,998,capture,500,EUR,reversed,2026-11-30T11:00:00+00:00,35\n"
)


@pytest.fixture
def operator(client, channels):
    user = UserFactory(username="recon-op", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def _upload(client, content: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/admin/reconciliation/settlementfile/upload/",
        {
            "channel": "alpha",
            "business_day": "2026-11-30",
            "file": SimpleUploadedFile("day.csv", content.encode(), content_type="text/csv"),
        },
    )


def test_upload_reconciles_and_the_workflow_resolves_with_a_note(client, operator):
    response = _upload(client, CSV)
    assert response.status_code == 302
    assert ReconciliationRun.objects.get().discrepancies == {"BANK_ONLY": 2}
    ids = list(Discrepancy.objects.values_list("id", flat=True))

    page = client.post(
        "/admin/reconciliation/discrepancy/", {"action": "resolve", "_selected_action": ids}
    )
    assert page.status_code == 200 and "note" in page.content.decode()
    done = client.post(
        "/admin/reconciliation/discrepancy/",
        {"action": "resolve", "_selected_action": ids, "note": "refunded by hand"},
    )
    assert done.status_code == 302
    assert set(Discrepancy.objects.values_list("status", "resolved_by", "note")) == {
        ("resolved", operator.id, "refunded by hand")
    }
    # ... and the review items filed for them are closed with the same decision
    items = ManualReviewItem.objects.filter(kind="reconciliation")
    assert items.count() == 2
    assert set(items.values_list("status", "resolution_note")) == {("resolved", "refunded by hand")}

    export = client.post(
        "/admin/reconciliation/discrepancy/", {"action": "export_csv", "_selected_action": ids}
    )
    lines = export.content.decode().strip().splitlines()
    assert lines[0].startswith("business_day,channel,kind,key")
    assert len(lines) == 3 and "refunded by hand" in lines[1]

    chart = client.get("/admin/reconciliation/reconciliationrun/chart/")
    assert chart.status_code == 200
    assert "<svg" in chart.content.decode() and "2 discrepancies" in chart.content.decode()


def test_a_malformed_upload_is_refused_and_imports_nothing(client, operator):
    response = _upload(client, CSV.replace("1000", "10.00"))
    assert response.status_code == 200
    assert "line 2: amount" in response.content.decode()
    assert not SettlementFile.objects.exists()
    assert not ReconciliationRun.objects.exists()


def test_pages_render(client, operator):
    for url in [
        "/admin/reconciliation/reconciliationrun/",
        "/admin/reconciliation/settlementfile/",
        "/admin/reconciliation/discrepancy/",
        "/admin/reconciliation/settlementfile/upload/",
    ]:
        assert client.get(url).status_code == 200, url


def test_the_chart_counts_a_re_run_day_once(client, operator):
    # Given a day alpha was reconciled three times (the last run failed) and beta once
    day = timezone.localdate()
    done = ReconciliationRun.Status.COMPLETED
    for status, amount in [(done, 700), (done, 400), (ReconciliationRun.Status.FAILED, 0)]:
        ReconciliationRun.objects.create(
            channel="alpha", business_day=day, status=status, unmatched_amount=amount
        )
    ReconciliationRun.objects.create(
        channel="beta", business_day=day, status=done, unmatched_amount=30
    )
    ReconciliationRun.objects.create(
        channel="alpha", business_day=day - timedelta(days=1), status=done, unmatched_amount=5
    )

    chart = client.get("/admin/reconciliation/reconciliationrun/chart/")

    # Then each channel's day counts with its latest completed run only
    amounts = {bar["day"]: bar["amount"] for bar in chart.context["bars"]}
    assert amounts[day] == 400 + 30
    assert amounts[day - timedelta(days=1)] == 5


def test_an_upload_while_the_day_is_being_reconciled_says_it_was_imported(client, operator):
    from shop.locks import OwnedLock

    lock = OwnedLock("reconcile:alpha:2026-11-30", ttl=60)
    assert lock.acquire()  # a run of that day is in progress elsewhere
    try:
        response = _upload(client, CSV)
    finally:
        lock.release()
    assert response.status_code == 200
    assert "Imported 2 rows, but not reconciled" in response.content.decode()
    assert SettlementFile.objects.count() == 1 and not ReconciliationRun.objects.exists()
    assert _upload(client, CSV).status_code == 302  # the same file again: reconciled now
    assert ReconciliationRun.objects.get().status == "completed"
