"""A payment channel whose live success rate falls below the threshold alerts operators, from
real calls to the sandbox acquirer."""

from __future__ import annotations

import pytest

from apps.orders import services as orders
from apps.payments.services import payment_pay
from apps.payments.services.channels import channels_watch, health_for
from apps.payments.tasks import channels_watch as channels_watch_task
from shop.models import Alert
from tests.alerting import window_passes
from tests.factories.catalog import product_with_skus

ALL = "__all__"
pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases=ALL, transaction=True)]


@pytest.fixture
def watched(settings, acquirer, channels):
    """Alert below 90 % from 20 calls up; one call per failed authorization (no retries) and a
    breaker that stays out of the way, so the counts are exact."""
    settings.ALERT_CHANNEL_SUCCESS_MIN = 0.90
    settings.ALERT_CHANNEL_MIN_ATTEMPTS = 20
    settings.ALERT_CHANNEL_WINDOW = 300
    settings.RETRY_ATTEMPTS = 1
    settings.BREAKER_FAILURE_THRESHOLD = 1000
    return acquirer


def _pay(shopper, sku, channel: str, times: int = 1) -> list[str]:
    statuses = []
    for _ in range(times):
        order = orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
        payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel=channel)
        statuses.append(payment.status)
    return statuses


def test_a_channel_below_its_success_threshold_alerts_once_per_window(watched, alert_sink, shopper):
    sku = product_with_skus(stock=100).skus.get()

    # Given one failed call at beta, out of one: too few calls to judge
    watched.set_faults("beta", outage=True)
    assert _pay(shopper, sku, "beta") == ["failed"]
    # and alpha at 95 %: 10 payments (authorize + capture each), then one failed authorization
    assert _pay(shopper, sku, "alpha", times=10) == ["succeeded"] * 10
    watched.set_faults("alpha", outage=True)
    assert _pay(shopper, sku, "alpha") == ["failed"]
    stats = health_for("alpha").read()
    assert (stats.ok, stats.failed) == (20, 1)

    # When the watch runs: nobody is alerted
    assert channels_watch_task() == {}
    assert not Alert.objects.exists()

    # When two more calls fail: 20 of 23, 87 %
    assert _pay(shopper, sku, "alpha", times=2) == ["failed"] * 2
    assert channels_watch() == {"alpha": pytest.approx(20 / 23)}

    # Then operators hear of alpha, once
    assert alert_sink.notified("channel_success") == 1
    alert = alert_sink.alert("channel_success", "alpha")
    assert "87%" in alert.subject and "3 of 23 calls" in alert.body

    # Still failing at the next check within the window: counted, not sent
    channels_watch()
    assert alert_sink.notified("channel_success") == 1
    assert alert_sink.alert("channel_success").occurrences == 2

    # After the window, sent again
    window_passes("channel_success")
    channels_watch()
    assert alert_sink.notified("channel_success") == 2


def test_without_enough_calls_nothing_is_judged(watched, alert_sink, shopper, settings):
    settings.ALERT_CHANNEL_MIN_ATTEMPTS = 5
    sku = product_with_skus(stock=10).skus.get()
    watched.set_faults("alpha", outage=True)
    _pay(shopper, sku, "alpha", times=4)
    assert channels_watch() == {}
    _pay(shopper, sku, "alpha")
    assert channels_watch() == {"alpha": 0.0}
    assert alert_sink.notified("channel_success") == 1
