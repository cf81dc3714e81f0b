"""Payment metrics move with the payments: attempts per channel and outcome, latency, the
breaker's state read live at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from apps.payments.services import payment_pay
from apps.payments.services.channels import breaker_for
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"
pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases=ALL)]


def _attempts(channel: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "shop_payment_attempts_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


def _latency_count(channel: str) -> float:
    value = REGISTRY.get_sample_value(
        "shop_payment_attempt_duration_seconds_count", {"channel": channel}
    )
    return value or 0.0


def test_a_payment_on_channel_a_increments_a_s_success_counter_only(
    acquirer, channels, shopper, order
):
    before = {c: _attempts(c, "success") for c in ("alpha", "beta", "gamma")}
    timed = _latency_count("alpha")

    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card", channel="alpha")

    assert payment.status == "succeeded"
    assert _attempts("alpha", "success") == before["alpha"] + 1
    assert _attempts("beta", "success") == before["beta"]
    assert _attempts("gamma", "success") == before["gamma"]
    assert _latency_count("alpha") == timed + 1
    assert_invariants_hold()


def test_a_failing_channel_counts_as_unavailable_and_the_payment_fails_over(
    acquirer, channels, shopper, order
):
    acquirer.set_faults("alpha", outage=True)
    unavailable = _attempts("alpha", "unavailable")
    succeeded = {"method": "card", "status": "succeeded"}
    paid = REGISTRY.get_sample_value("shop_payments_total", succeeded) or 0

    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")

    assert payment.status == "succeeded" and payment.channel != "alpha"
    assert _attempts("alpha", "unavailable") == unavailable + 1
    assert (
        REGISTRY.get_sample_value("shop_payments_total", {"method": "card", "status": "succeeded"})
        == paid + 1
    )
    assert_invariants_hold()


def test_a_wallet_payment_is_counted_on_the_wallet(shopper, order):
    before = _attempts("wallet", "success")
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert payment.status == "succeeded"
    assert _attempts("wallet", "success") == before + 1


def test_the_scrape_shows_each_channel_s_breaker_as_redis_holds_it(
    acquirer, channels, admin_client
):
    breaker_for("beta").force_open()
    try:
        text = admin_client.get("/metrics").content.decode()
    finally:
        breaker_for("beta").force_close()
    assert 'shop_channel_breaker_state{channel="beta"} 2.0' in text
    assert 'shop_channel_breaker_state{channel="alpha"} 0.0' in text
    assert 'shop_channel_enabled{channel="beta"} 1.0' in text
