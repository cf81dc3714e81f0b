"""Card payments through the sandbox acquirer (a real process): routing, failover, breakers,
lost answers, declines, and the recovery of payments left half-way."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from apps.orders import services as orders
from apps.orders.models import Order
from apps.payments.models import (
    Account,
    PaymentAttempt,
    PaymentChannel,
    TccTransaction,
    Transfer,
)
from apps.payments.services import payment_pay, tcc_recover
from apps.payments.services.channels import (
    breaker_for,
    channels_rank,
    health_for,
    health_snapshot,
)
from shop import http as shop_http
from shop.sharding import shard_for_id
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"
pytestmark = [
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases=ALL),
]


def _order(order) -> Order:
    return Order.objects.using(shard_for_id(order.id)).get(id=order.id)


def _attempts(payment) -> list[tuple[str, str]]:
    return list(
        PaymentAttempt.objects.using(shard_for_id(payment.id))
        .filter(payment_id=payment.id)
        .values_list("channel", "outcome")
    )


def _pay(shopper, order, **kwargs):
    return payment_pay(order_id=order.id, user_id=shopper.id, method="card", **kwargs)


def test_a_card_payment_is_captured_at_the_best_channel_and_booked(
    acquirer, channels, shopper, order
):
    payment = _pay(shopper, order)

    assert payment.status == "succeeded"
    assert payment.channel == "alpha"  # equally healthy: the fastest wins
    assert acquirer.payment("alpha", str(payment.id))["status"] == "captured"
    attempt = PaymentAttempt.objects.using(shard_for_id(payment.id)).get(payment_id=payment.id)
    assert attempt.outcome == "authorized" and attempt.reason.startswith("rank 1/")
    assert _order(order).status == "paid"
    fee = PaymentChannel.objects.get(code="alpha").fee_for(3000)
    assert Account.objects.get(key="clearing:alpha:EUR").available == -(3000 - fee)
    assert Account.objects.get(key="fees:EUR").available == -fee
    assert Account.objects.get(key="merchant:EUR").available == 3000
    assert_invariants_hold()


def test_a_channel_down_fails_over_then_its_breaker_opens_and_recovers(
    acquirer, channels, shopper, settings
):
    from apps.orders import services as orders
    from tests.factories.catalog import product_with_skus

    settings.BREAKER_FAILURE_THRESHOLD = 3
    sku = product_with_skus(stock=50).skus.get()
    acquirer.set_faults("alpha", outage=True)

    # Payments fail over from alpha (down) to beta while alpha's breaker counts the failures
    placed = [
        orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
        for _ in range(3)
    ]
    first = _pay(shopper, placed[0])
    assert (first.status, first.channel) == ("succeeded", "beta")
    assert _attempts(first)[0] == ("alpha", "unavailable")
    assert breaker_for("alpha").state() == "open"

    # Open: alpha is skipped without a call
    second = _pay(shopper, placed[1])
    assert (second.status, second.channel) == ("succeeded", "beta")
    assert [channel for channel, _ in _attempts(second)] == ["beta"]

    # Alpha comes back; after the reset timeout a half-open probe closes its breaker
    acquirer.set_faults("alpha")
    deadline = time.monotonic() + 10
    while breaker_for("alpha").state() != "half_open" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert breaker_for("alpha").state() == "half_open"
    third = _pay(shopper, placed[2], channel="alpha")
    assert (third.status, third.channel) == ("succeeded", "alpha")
    assert breaker_for("alpha").state() == "closed"
    assert_invariants_hold()


def test_an_approval_whose_answer_is_lost_is_settled_by_a_status_query(
    acquirer, channels, shopper, order
):
    acquirer.set_faults("alpha", lose_response_rate=1.0)

    payment = _pay(shopper, order)

    # No second charge anywhere: alpha was asked what happened, and it had approved
    assert (payment.status, payment.channel) == ("succeeded", "alpha")
    assert [c for c, _ in _attempts(payment)] == ["alpha", "alpha"]
    assert _attempts(payment)[1][1] == "queried:authorized"
    for other in ("beta", "gamma"):
        assert acquirer.payment(other, str(payment.id))["status"] == "not_found"
    assert acquirer.payment("alpha", str(payment.id))["status"] == "captured"
    assert_invariants_hold()


def test_an_unanswerable_channel_leaves_the_payment_unknown_until_recovery(
    acquirer, channels, shopper, order, settings
):
    # The approval's answer is lost and the status query finds the channel in outage
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = _pay(shopper, order)
    assert payment.status == "unknown"
    assert _order(order).status == "pending_payment"
    assert all(
        acquirer.payment(c, str(payment.id))["status"] == "not_found" for c in ("beta", "gamma")
    )

    # Later the recovery job asks again, learns it was approved, and finishes the payment
    acquirer.set_faults("alpha")
    time.sleep(1.6)  # the stalled authorization lands at the bank
    TccTransaction.objects.filter(payment_id=payment.id).update(next_retry_at=timezone.now())
    assert tcc_recover() == {"confirmed": 1}
    assert _order(order).status == "paid"
    assert acquirer.payment("alpha", str(payment.id))["status"] == "captured"
    assert_invariants_hold()


def test_a_decline_fails_the_payment_and_the_order_stays_payable(
    acquirer, channels, shopper, order
):
    acquirer.set_faults("alpha", decline_rate=1.0)
    declined = _pay(shopper, order)
    assert (declined.status, declined.failure_code) == ("failed", "payment_declined")
    assert [c for c, _ in _attempts(declined)] == ["alpha"]  # a decline is not failed over
    assert _order(order).status == "pending_payment"

    acquirer.set_faults("alpha")
    assert _pay(shopper, order).status == "succeeded"
    assert_invariants_hold()


def test_with_no_channel_left_the_payment_fails_cleanly(acquirer, channels, shopper, order):
    for code in ("alpha", "beta", "gamma"):
        acquirer.set_faults(code, outage=True)
    payment = _pay(shopper, order)
    assert (payment.status, payment.failure_code) == ("failed", "no_channel_available")
    assert _order(order).status == "pending_payment"
    assert _order(order).payment_started_at is None
    assert not Transfer.objects.filter(reference=f"pay-{payment.id}").exists()
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_card_payments_from_concurrent_threads_share_kept_connections_and_each_capture_once(
    acquirer, channels, shopper
):
    # Given eight unpaid orders and one web process's threads paying them at once (gthread)
    sku = product_with_skus(stock=20).skus.get()
    unpaid = [
        orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 1}])
        for _ in range(8)
    ]
    shop_http.pool.clear()
    made_before = shop_http.pool.made
    start = threading.Barrier(len(unpaid))

    def pay(order):
        start.wait()
        try:
            return _pay(shopper, order)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(unpaid)) as executor:
        payments = list(executor.map(pay, unpaid))

    # Then each order is captured once at alpha, booked, and paid
    assert [(p.status, p.channel) for p in payments] == [("succeeded", "alpha")] * len(unpaid)
    assert len({p.id for p in payments}) == len(unpaid)
    for payment in payments:
        assert acquirer.payment("alpha", str(payment.id))["status"] == "captured"
    assert all(_order(order).status == "paid" for order in unpaid)
    # the 16 calls (authorize + capture each) went over kept connections, at most one per thread
    assert shop_http.pool.made - made_before <= len(unpaid)
    # and the channel's breaker and live health saw every call succeed
    assert breaker_for("alpha").state() == "closed"
    health = health_for("alpha").read()
    assert (health.ok, health.total) == (2 * len(unpaid), 2 * len(unpaid))
    assert_invariants_hold()


def test_routing_filters_and_ranks(channels, settings):
    from datetime import time as clock

    PaymentChannel.objects.filter(code="gamma").update(enabled=False)
    assert [c.channel.code for c in channels_rank(method="card", amount=3000)] == ["alpha", "beta"]
    assert channels_rank(method="wallet", amount=3000) == []
    # beta only: alpha's maximum is lower than the amount now
    PaymentChannel.objects.filter(code="alpha").update(max_amount=100)
    assert [c.channel.code for c in channels_rank(method="card", amount=3000)] == ["beta"]
    # outside beta's service hours
    now = timezone.now()
    PaymentChannel.objects.filter(code="beta").update(
        opens_at=clock((now + timedelta(hours=1)).hour),
        closes_at=clock((now + timedelta(hours=2)).hour),
    )
    assert channels_rank(method="card", amount=3000, now=now) == []


@pytest.mark.django_db(databases=ALL)
def test_a_lower_success_rate_ranks_a_channel_lower(channels, settings):
    from apps.payments.services.channels import health_for

    for _ in range(10):
        health_for("alpha").record(ok=False, latency_ms=40)
        health_for("beta").record(ok=True, latency_ms=120)
    ranked = channels_rank(method="card", amount=3000)
    assert [c.channel.code for c in ranked][:2] == ["beta", "gamma"] or ranked[
        0
    ].channel.code == "beta"
    assert ranked[-1].channel.code == "alpha"
    assert "success 0%" in ranked[-1].reason(3, 3)


def _first_channel(_: int) -> str:
    """The best channel, ranked in a thread of its own (its own database connection)."""
    try:
        return channels_rank(method="card", amount=3000)[0].channel.code
    finally:
        connections.close_all()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_routing_reuses_a_process_read_of_channel_health_for_its_ttl(
    channels, settings, monkeypatch
):
    from shop.window import SlidingWindow

    settings.CHANNEL_HEALTH_CACHE_TTL = 3600
    health_snapshot.forget()
    reads = []
    real_read = SlidingWindow.read

    def counted_read(window):
        reads.append(window.name)
        return real_read(window)

    monkeypatch.setattr(SlidingWindow, "read", counted_read)
    try:
        # Given a first ranking (alpha healthy and fastest), read once per channel
        assert channels_rank(method="card", amount=3000)[0].channel.code == "alpha"
        channels_read = len(reads)
        assert channels_read == len(
            {c.channel.code for c in channels_rank(method="card", amount=3000)}
        )
        # When alpha starts failing, threads ranking within the TTL use this process's read
        for _ in range(10):
            health_for("alpha").record(ok=False, latency_ms=40)
        with ThreadPoolExecutor(max_workers=8) as executor:
            firsts = list(executor.map(_first_channel, range(32)))
        assert firsts == ["alpha"] * 32
        assert len(reads) == channels_read
        # Then, once the read is forgotten (or the TTL passed), the failures count
        health_snapshot.forget()
        assert channels_rank(method="card", amount=3000)[-1].channel.code == "alpha"
        assert len(reads) == 2 * channels_read
    finally:
        health_snapshot.forget()
