"""The periodic invariant audit: the audit_invariants checks, a gauge per check, and an alert
per violated invariant, once per window."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.management import call_command
from django.db import connections
from prometheus_client import REGISTRY

from apps.inventory.models import Stock
from shop.audit import invariants_audit
from shop.models import Alert
from shop.tasks import invariants_audit as invariants_audit_task
from tests.alerting import window_passes
from tests.factories.catalog import product_with_skus

ALL = "__all__"
STOCK_CHECK = "apps.inventory.audit.stock_violations"
pytestmark = pytest.mark.django_db(databases=ALL, transaction=True)


def _gauge(check: str) -> float | None:
    return REGISTRY.get_sample_value("shop_invariant_violations", {"check": check})


def _break_stock(sku) -> None:
    """Two units counted as reserved that no reservation holds (the CHECK constraint still
    holds: received = available + reserved + sold)."""
    Stock.objects.filter(sku=sku).update(available=8, reserved=2)


def _repair_stock(sku) -> None:
    Stock.objects.filter(sku=sku).update(available=10, reserved=0)


def test_a_violated_invariant_alerts_once_per_window_and_sets_its_gauge(alert_sink, settings):
    settings.INVARIANT_AUDIT_RECHECK_SECONDS = 0
    sku = product_with_skus(stock=10).skus.get()

    # Given a sound database: every gauge at 0, nobody alerted
    assert invariants_audit_task() == dict.fromkeys(settings.AUDIT_CHECKS, 0)
    assert all(_gauge(check) == 0 for check in settings.AUDIT_CHECKS)
    assert not Alert.objects.exists()

    # When a stock row breaks invariant 1
    _break_stock(sku)
    assert invariants_audit()[STOCK_CHECK] == 1

    # Then its gauge shows it and operators are told once, critically, with the violation
    assert _gauge(STOCK_CHECK) == 1
    assert alert_sink.notified("invariant") == 1
    alert = alert_sink.alert("invariant", STOCK_CHECK)
    assert alert.severity == "critical"
    assert f"SKU {sku.id}: reserved 2 but held reservations: 0" in alert.body
    with pytest.raises(SystemExit):  # the command, unchanged, agrees
        call_command("audit_invariants")

    # Still broken at the next audit within the window: counted, not sent
    invariants_audit()
    assert alert_sink.notified("invariant") == 1
    assert alert_sink.alert("invariant").occurrences == 2

    # After the window, sent again
    window_passes("invariant")
    invariants_audit()
    assert alert_sink.notified("invariant") == 2

    # Once repaired, the gauge is back to 0 and nothing more is raised
    _repair_stock(sku)
    assert invariants_audit()[STOCK_CHECK] == 0
    assert _gauge(STOCK_CHECK) == 0
    assert alert_sink.alert("invariant").occurrences == 3
    call_command("audit_invariants")


def test_a_violation_gone_by_the_recheck_alerts_nobody(alert_sink, settings):
    # Given an audit that re-checks a failing check after a moment
    settings.INVARIANT_AUDIT_RECHECK_SECONDS = 1.0
    sku = product_with_skus(stock=10).skus.get()
    _break_stock(sku)

    # When the row is put right while the audit waits (a step caught half-way)
    def repair_soon() -> None:
        time.sleep(0.3)
        try:
            _repair_stock(sku)
        finally:
            connections.close_all()

    repairer = threading.Thread(target=repair_soon)
    repairer.start()
    counts = invariants_audit()
    repairer.join()

    # Then the check counts as holding, and nobody is alerted
    assert counts[STOCK_CHECK] == 0 and _gauge(STOCK_CHECK) == 0
    assert not Alert.objects.exists() and alert_sink.notified("invariant") == 0


def test_a_check_that_cannot_run_does_not_stop_the_others(alert_sink, settings):
    settings.INVARIANT_AUDIT_RECHECK_SECONDS = 0
    settings.AUDIT_CHECKS = ["tests.shop.test_invariant_alerts.broken_check", STOCK_CHECK]
    sku = product_with_skus(stock=10).skus.get()
    _break_stock(sku)
    assert invariants_audit() == {STOCK_CHECK: 1}
    assert alert_sink.notified("invariant") == 1


def broken_check():
    raise RuntimeError("this check is broken")
    yield  # pragma: no cover - a generator, like the real checks
