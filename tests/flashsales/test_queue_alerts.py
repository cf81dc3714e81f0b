"""A flash sale's checkout queue near its bound alerts operators while there is time to act."""

from __future__ import annotations

import pytest

from apps.flashsales.gate import gate_admit, gate_state
from apps.flashsales.selectors import flash_sale_truth
from apps.flashsales.services import checkout_queues_watch, flash_sale_start
from apps.flashsales.tasks import checkout_queues_watch as checkout_queues_watch_task
from shop.models import Alert
from tests.alerting import window_passes
from tests.factories.catalog import product_with_skus

ALL = "__all__"
pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases=ALL, transaction=True)]


def _on_sale():
    sku = product_with_skus(stock=0).skus.get()
    flash_sale_start(sku_code=sku.code, stock=100, per_user_limit=None)
    return sku


def _admit(sku, buyers: range) -> list[str]:
    """Checkout attempts admitted into the SKU's queue by its real gate (not yet processed)."""
    return [
        gate_admit(
            sku_id=sku.id,
            user_id=buyer,
            quantity=1,
            per_user_limit=None,
            idempotency_key=f"attempt-{buyer}",
            truth=lambda: flash_sale_truth(sku_id=sku.id),
        ).outcome
        for buyer in buyers
    ]


def test_a_queue_near_its_bound_alerts_once_per_window(alert_sink, settings):
    settings.CHECKOUT_QUEUE_BOUND = 10
    settings.ALERT_QUEUE_NEAR_BOUND = 0.8
    crowded, calm = _on_sale(), _on_sale()

    # Given queues at half their bound: nobody is alerted
    assert _admit(crowded, range(1, 6)) == ["admitted"] * 5
    assert _admit(calm, range(1, 6)) == ["admitted"] * 5
    assert checkout_queues_watch_task() == {}
    assert not Alert.objects.exists()

    # When one reaches 80 % of its bound
    assert _admit(crowded, range(6, 9)) == ["admitted"] * 3
    assert gate_state(sku_id=crowded.id).queued == 8
    assert checkout_queues_watch() == {crowded.code: 8}

    # Then operators hear of that SKU, once
    assert alert_sink.notified("checkout_queue") == 1
    alert = alert_sink.alert("checkout_queue", crowded.code)
    assert "80% of its bound" in alert.subject and "8 checkouts" in alert.body

    # Still that full at the next check within the window: counted, not sent
    checkout_queues_watch()
    assert alert_sink.notified("checkout_queue") == 1
    assert alert_sink.alert("checkout_queue").occurrences == 2

    # After the window, sent again; the admission path still refuses past the bound
    window_passes("checkout_queue")
    assert _admit(crowded, range(9, 12)) == ["admitted", "admitted", "busy"]
    assert checkout_queues_watch() == {crowded.code: 10}
    assert alert_sink.notified("checkout_queue") == 2
    assert not Alert.objects.filter(key=calm.code).exists()
