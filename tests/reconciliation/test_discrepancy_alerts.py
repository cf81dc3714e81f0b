"""A reconciliation run that finds new discrepancies alerts operators, once per window for its
channel and business day."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apps.orders import services as orders
from apps.payments.services import payment_pay
from apps.reconciliation.services import reconcile_day
from shop.models import Alert
from tests.alerting import window_passes
from tests.factories.catalog import product_with_skus

ALL = "__all__"
pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases=ALL, transaction=True)]


def test_new_discrepancies_alert_once_per_window(acquirer, channels, shopper, alert_sink):
    today = datetime.now(UTC).date()
    key = f"alpha:{today}"
    sku = product_with_skus(stock=10).skus.get()
    for _ in range(3):
        order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
        payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel="alpha")
        assert payment.status == "succeeded"

    # Given a day the bank's file agrees with: no discrepancy, no alert
    assert reconcile_day(channel="alpha", business_day=today).run.discrepancies == {}
    assert not Alert.objects.exists()

    # When the bank's file settles one capture for one cent more
    acquirer.set_faults("alpha", settlement_anomalies=["amount"])
    assert reconcile_day(channel="alpha", business_day=today).opened == 1

    # Then operators are told, with the counts by type
    assert alert_sink.notified("reconciliation") == 1
    alert = alert_sink.alert("reconciliation", key)
    assert "1 new discrepancies" in alert.subject
    assert "AMOUNT_MISMATCH 1" in alert.body and "1 of them still open" in alert.body

    # Re-running the same day finds nothing new: not even an occurrence
    assert reconcile_day(channel="alpha", business_day=today).opened == 0
    assert alert_sink.alert("reconciliation").occurrences == 1

    # A run finding another one within the window: counted, not sent
    acquirer.set_faults("alpha", settlement_anomalies=["amount", "status"])
    assert reconcile_day(channel="alpha", business_day=today).opened == 1
    assert alert_sink.notified("reconciliation") == 1
    alert = alert_sink.alert("reconciliation")
    assert alert.occurrences == 2 and "STATUS_MISMATCH 1" in alert.body

    # After the window, the next new one is sent again
    window_passes("reconciliation")
    acquirer.set_faults("alpha", settlement_anomalies=["amount", "status", "currency"])
    assert reconcile_day(channel="alpha", business_day=today).opened == 1
    assert alert_sink.notified("reconciliation") == 2
    assert "CURRENCY_MISMATCH 1" in alert_sink.webhook.of("reconciliation")[-1]["body"]
