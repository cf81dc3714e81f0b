"""Paid orders are processed by a real worker: exactly once, through crashes and poison."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from apps.inventory.services import stock_release
from apps.orders import services
from apps.orders.models import FulfilmentStep, LoyaltyEntry, Order, OrderEvent
from shop.models import ManualReviewItem
from shop.sharding import shard_for_id
from tests.orders.conftest import assert_invariants_hold
from tests.workers import StallingSMTPServer, Worker, purge_queues, wait_for

ALL = "__all__"
pytestmark = [
    pytest.mark.needs_broker,
    pytest.mark.needs_postgres,
    pytest.mark.django_db(databases=ALL, transaction=True),
]


def _order(order_id) -> Order:
    return Order.objects.using(shard_for_id(order_id)).get(id=order_id)


def test_a_paid_order_is_processed_by_the_worker(buyer, sku):
    purge_queues()
    worker = Worker().start()
    try:
        order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 2}])
        services.order_mark_paid(order_id=order.id, actor="test")
        wait_for(lambda: _order(order.id).status == "processing")
    finally:
        worker.stop()
    alias = shard_for_id(order.id)
    assert set(FulfilmentStep.objects.using(alias).values_list("step", flat=True)) == set(
        services.FULFILMENT_STEPS
    )
    assert LoyaltyEntry.objects.using(alias).get(order_id=order.id).points == 20
    assert all(line.allocated_at for line in _order(order.id).lines.all())
    assert_invariants_hold()


def test_a_worker_killed_mid_task_is_redelivered_and_applied_once(buyer, sku):
    purge_queues()
    smtp = StallingSMTPServer()
    mail = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp.port),
        "EMAIL_TIMEOUT": "60",
    }
    first = Worker(**mail).start()
    second = None
    try:
        # Given a paid order whose processing is stuck sending the buyer's e-mail
        order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        wait_for(lambda: len(smtp.messages) == 1)  # "your items are reserved" went out
        smtp.stall()
        services.order_mark_paid(order_id=order.id, actor="test")
        assert smtp.stalled_connection.wait(60)
        alias = shard_for_id(order.id)
        assert FulfilmentStep.objects.using(alias).filter(step="allocation").exists()

        # When the worker is SIGKILLed mid-task and another one starts
        first.kill()
        second = Worker(**mail).start()
        smtp.release.set()

        # Then the task is redelivered and completes, with every effect applied once
        wait_for(lambda: _order(order.id).status == "processing", timeout=90)
    finally:
        first.kill()
        if second:
            second.stop()
        smtp.close()
    assert LoyaltyEntry.objects.using(alias).filter(order_id=order.id).count() == 1
    assert FulfilmentStep.objects.using(alias).filter(order_id=order.id).count() == 3
    assert (
        OrderEvent.objects.using(alias).filter(order_id=order.id, to_status="processing").count()
        == 1
    )
    assert len(smtp.messages) == 2  # reserved + preparing: the killed attempt sent nothing
    assert_invariants_hold()


def test_a_poison_task_gets_one_plus_three_attempts_then_one_review_item(buyer, sku, capsys):
    purge_queues()
    # Given a paid order whose stock was given back (it cannot be allocated: poison)
    order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    stock_release(order_id=order.id)
    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(status="paid")

    worker = Worker(DEAD_LETTER_RETRY_DELAY="1").start()
    try:
        services.order_processing_retry(order_id=order.id, actor="test")
        item = wait_for(
            lambda: ManualReviewItem.objects.filter(reference=str(order.id)).first(), timeout=90
        )
        # Give a runaway retry loop the chance to show itself
        import time

        time.sleep(3)
    finally:
        worker.stop()

    alias = shard_for_id(order.id)
    failures = OrderEvent.objects.using(alias).filter(order_id=order.id, kind="processing_failed")
    assert sorted(failures.values_list("data__attempt", flat=True)) == [1, 2, 3, 4]
    assert ManualReviewItem.objects.count() == 1
    assert item.kind == "order_processing"
    assert "no committed stock" in item.summary
    assert _order(order.id).status == "paid"

    # The audit reports exactly that inconsistency, the one now waiting for an operator
    with pytest.raises(SystemExit):
        call_command("audit_invariants")
    out = capsys.readouterr().out
    assert out.count("VIOLATION") == 1
    assert f"order {order.id} is paid but its reservations are ['released']" in out
