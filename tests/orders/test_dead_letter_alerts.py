"""The dead-letter handler alerts operators: once per window for the dead-lettered task."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command

from apps.inventory.services import stock_release
from apps.orders import services
from apps.orders.models import Order
from apps.orders.tasks import order_dead_letter
from shop.models import Alert, ManualReviewItem
from shop.sharding import shard_for_id
from tests.alerting import (
    WebhookReceiver,
    window_passes,
)
from tests.factories.users import UserFactory
from tests.workers import StallingSMTPServer, Worker, purge_queues, wait_for

ALL = "__all__"
TASK = "apps.orders.tasks.order_process"


def _poison_order(buyer, sku) -> Order:
    """A paid order whose stock was given back: it cannot be allocated, so processing fails."""
    order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    stock_release(order_id=order.id)
    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(status="paid")
    return order


@pytest.mark.django_db(databases=ALL, transaction=True)
def test_dead_letters_alert_once_per_window(alert_sink, buyer, sku):
    # Given an order processed without trouble: nobody is alerted
    healthy = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    services.order_mark_paid(order_id=healthy.id, actor="test")
    services.order_fulfilment_run(order_id=healthy.id)
    assert not Alert.objects.exists()

    # When a dead letter reaches the handler (the last attempt: manual review)
    first = _poison_order(buyer, sku)
    order_dead_letter(order_id=str(first.id), error="boom", attempt=4, message_id="dlq-1")

    # Then operators are told once, critical, naming the order
    assert alert_sink.notified("dead_letter") == 1
    alert = alert_sink.alert("dead_letter", TASK)
    assert alert.severity == "critical" and str(first.id) in alert.subject
    assert ManualReviewItem.objects.filter(reference=str(first.id)).exists()

    # A redelivered dead letter is no new occurrence; another order's is counted, not sent
    order_dead_letter(order_id=str(first.id), error="boom", attempt=4, message_id="dlq-1")
    assert alert_sink.alert("dead_letter").occurrences == 1
    second = _poison_order(UserFactory(username="buyer-b"), sku)
    order_dead_letter(order_id=str(second.id), error="boom", attempt=4, message_id="dlq-2")
    assert alert_sink.notified("dead_letter") == 1
    assert alert_sink.alert("dead_letter").occurrences == 2

    # After the window the next dead letter is sent again
    window_passes("dead_letter")
    third = _poison_order(UserFactory(username="buyer-c"), sku)
    order_dead_letter(order_id=str(third.id), error="boom", attempt=4, message_id="dlq-3")
    assert alert_sink.notified("dead_letter") == 2
    assert str(third.id) in alert_sink.webhook.of("dead_letter")[-1]["subject"]


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_poison_task_on_a_real_worker_alerts_once_for_its_four_dead_letters(
    operators_group, buyer, sku
):
    purge_queues()
    receiver, smtp = WebhookReceiver(), StallingSMTPServer()
    worker = Worker(
        DEAD_LETTER_RETRY_DELAY="1",
        ALERT_WEBHOOK_URL=receiver.url,
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp.port),
    ).start()
    try:
        # Given a healthy order processed by the worker: no alert
        healthy = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        services.order_mark_paid(order_id=healthy.id, actor="test")
        wait_for(
            lambda: (
                Order.objects.using(shard_for_id(healthy.id)).get(id=healthy.id).status
                == "processing"
            )
        )
        assert not Alert.objects.exists()

        # When a poison order fails 1 + 3 times and lands in manual review
        order = _poison_order(buyer, sku)
        services.order_processing_retry(order_id=order.id, actor="test")
        wait_for(
            lambda: ManualReviewItem.objects.filter(reference=str(order.id)).exists(), timeout=90
        )
        wait_for(lambda: Alert.objects.filter(kind="dead_letter", occurrences=4).exists())

        # Then four dead letters made one notification, by mail and webhook
        wait_for(lambda: receiver.of("dead_letter"))
        time.sleep(1)  # a wrongly repeated notification would arrive by now
        assert len(receiver.of("dead_letter")) == 1
        assert len([m for m in smtp.messages if "Subject: [shop " in m]) == 1
        alert = Alert.objects.get(kind="dead_letter", key=TASK)
        assert (alert.occurrences, alert.notifications) == (4, 1)

        # After the window, the order retried by an operator fails again: sent again
        window_passes("dead_letter")
        services.order_processing_retry(order_id=order.id, actor="test")
        wait_for(lambda: len(receiver.of("dead_letter")) == 2)
    finally:
        worker.stop()
        receiver.close()
        smtp.close()
    with pytest.raises(SystemExit):  # the poison order is the one known inconsistency
        call_command("audit_invariants")
