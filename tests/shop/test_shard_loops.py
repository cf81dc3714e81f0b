"""DESIGN §6: background jobs that loop over the order shards skip a dead shard, report it
(log, ``shop_shard_loop_errors_total{loop,shard}``, a de-duplicated alert) and finish the
others."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.utils import timezone
from prometheus_client import REGISTRY

from apps.orders import services as orders
from apps.orders.audit import order_violations
from apps.orders.models import Order
from apps.orders.selectors import orders_per_minute
from apps.payments.audit import payment_violations
from apps.payments.selectors import payments_per_minute
from apps.payments.services import refunds_retry
from apps.reconciliation.services.janitor import payments_stuck_janitor
from shop.idempotency import idempotency_cleanup
from shop.models import Alert, OutboxMessage
from shop.outbox import (
    background,
    broker_health,
    outbox_backlog,
    outbox_enqueue,
    outbox_purge_published,
    outbox_relay,
)
from shop.sharding import shard_for_user
from shop.tcc import fences_cleanup
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold
from tests.workers import purge_queues

ALL = "__all__"
DEAD, LIVE = "orders_0", "orders_1"
pytestmark = [pytest.mark.needs_postgres, pytest.mark.django_db(databases=ALL, transaction=True)]


@contextmanager
def shard_down(alias: str):
    """The shard's server is gone: nothing listens on its port."""
    shard = connections[alias]
    port = shard.settings_dict["PORT"]
    shard.close()
    shard.settings_dict["PORT"] = 1
    try:
        yield
    finally:
        shard.close()
        shard.settings_dict["PORT"] = port


def _skipped(loop: str, alias: str = DEAD) -> float:
    return (
        REGISTRY.get_sample_value("shop_shard_loop_errors_total", {"loop": loop, "shard": alias})
        or 0.0
    )


def _buyer_on(alias: str):
    for i in range(200):
        user = UserFactory(username=f"on-{alias}-{i}")
        if shard_for_user(user.id) == alias:
            return user
    raise AssertionError(f"no user hashed to {alias}")


@pytest.mark.needs_broker
def test_the_outbox_relay_publishes_the_live_shards_backlog_with_a_dead_shard(settings):
    # Given a message waiting on the live shard
    purge_queues()
    settings.OUTBOX_RELAY_GRACE = 0
    broker_health.reset()
    buyer = _buyer_on(LIVE)
    with transaction.atomic(using=LIVE):
        outbox_enqueue(using=LIVE, user_id=buyer.id, task="apps.orders.tasks.order_placed_notify",
                       kwargs={"order_id": "1"}, queue="notifications")  # fmt: skip
    # (the commit handed it to this process's background publisher: let that finish first, or
    # it could mark the row published after the line below made it a backlog)
    assert background.drain()
    OutboxMessage.objects.using(LIVE).update(published_at=None)
    before = _skipped("outbox_relay")

    # When the relay runs twice with the other shard's server gone
    with shard_down(DEAD):
        first = outbox_relay()
        second = outbox_relay()

    # Then the live shard's message went out, the dead shard was counted each time, and one
    # alert was raised and notified once
    assert first == 1 and second == 0
    assert not OutboxMessage.objects.using(LIVE).filter(published_at__isnull=True).exists()
    assert _skipped("outbox_relay") == before + 2
    alert = Alert.objects.get(kind="shard_loop", key=f"outbox_relay:{DEAD}")
    assert alert.severity == "critical"
    assert alert.occurrences == 2 and alert.notifications == 1
    purge_queues()


def test_the_expiry_sweep_expires_the_live_shards_orders_with_a_dead_shard():
    sku = product_with_skus().skus.get()
    # Given an unpaid order past its expiry on the live shard
    buyer = _buyer_on(LIVE)
    order = orders.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    Order.objects.using(LIVE).filter(id=order.id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )

    with shard_down(DEAD):
        result = orders.orders_expire_sweep()

    assert result.expired == 1 and result.unreachable == [DEAD]
    assert Order.objects.using(LIVE).get(id=order.id).status == "expired"
    assert Alert.objects.filter(kind="shard_loop", key=f"orders_expire_sweep:{DEAD}").exists()
    assert_invariants_hold()


LOOPS: dict[str, Callable[[], object]] = {
    "payments_stuck_janitor": payments_stuck_janitor,
    "refunds_retry": refunds_retry,
    "idempotency_cleanup": idempotency_cleanup,
    "fences_cleanup": fences_cleanup,
    "outbox_backlog": outbox_backlog,
    "outbox_purge_published": lambda: outbox_purge_published(older_than=timedelta(days=1)),
    "audit_orders": lambda: list(order_violations()),
    "audit_payments": lambda: list(payment_violations()),
    "orders_per_minute": lambda: orders_per_minute(since=timezone.now() - timedelta(hours=1)),
    "payments_per_minute": lambda: payments_per_minute(since=timezone.now() - timedelta(hours=1)),
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_every_shard_loop_skips_a_dead_shard_and_reports_it(loop):
    before = (_skipped(loop), _skipped(loop, LIVE))

    with shard_down(DEAD):
        LOOPS[loop]()  # does not raise

    assert (_skipped(loop), _skipped(loop, LIVE)) == (before[0] + 1, before[1])
    assert Alert.objects.filter(kind="shard_loop", key=f"{loop}:{DEAD}").exists()


def test_the_audit_says_a_dead_shard_was_not_checked_instead_of_all_clear():
    # Given shard orders_0 unreachable
    out = io.StringIO()
    with shard_down(DEAD), pytest.raises(SystemExit) as exited:
        # When the audit runs
        call_command("audit_invariants", stdout=out)
    # Then it does not claim that every invariant holds: it names the shard it could not check
    # and exits 2 (1 stays "a violation was found")
    text = out.getvalue()
    assert exited.value.code == 2
    assert f"NOT CHECKED: shard {DEAD}" in text
    assert "all invariants hold" not in text
    # And with the shard back, the same audit is clean
    out = io.StringIO()
    call_command("audit_invariants", stdout=out)
    assert "all invariants hold" in out.getvalue()
