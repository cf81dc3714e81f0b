"""The outbox: the broker being down delays tasks but never loses them."""

from __future__ import annotations

import os
import queue
import threading

import pytest
from django.db import connections, transaction

from shop import outbox
from shop.models import OutboxMessage, ProcessedMessage
from shop.outbox import background, broker_health, outbox_enqueue, outbox_relay
from shop.sharding import order_shard_aliases, shard_for_user
from tests.orders.conftest import api_client, assert_invariants_hold, post_order
from tests.workers import Worker, broker_pointing_to, purge_queues, queue_depth, wait_for

ALL = "__all__"
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1//"
needs_services = [pytest.mark.needs_broker, pytest.mark.needs_postgres]


@pytest.fixture(autouse=True)
def _broker_considered_up(settings):
    settings.OUTBOX_RELAY_GRACE = 0  # the relay may take rows this test just wrote
    broker_health.reset()
    yield
    broker_health.reset()


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_checkout_succeeds_with_the_broker_down_and_its_task_goes_out_later(buyer, sku):
    purge_queues()
    # When a buyer checks out while the broker is unreachable
    with broker_pointing_to(DEAD_BROKER):
        response = post_order(api_client(buyer), [{"sku": sku.code, "quantity": 1}])
        # (the fast path runs on this process's background publisher, off the request path)
        assert background.drain()
    assert response.status_code == 201, response.json()

    # Then the order stands and its notification waits in the outbox
    alias = shard_for_user(buyer.id)
    message = OutboxMessage.objects.using(alias).get()
    assert message.published_at is None
    assert message.attempts == 1 and message.last_error

    # When the broker is back, the relay publishes it and a real worker consumes it once
    broker_health.reset()
    assert outbox_relay() == 1
    assert OutboxMessage.objects.using(alias).get().published_at is not None
    worker = Worker().start()
    try:
        wait_for(
            lambda: (
                ProcessedMessage.objects.using(alias)
                .filter(consumer="order_placed_notify")
                .exists()
            )
        )
    finally:
        worker.stop()
    assert outbox_relay() == 0  # nothing left to send
    assert_invariants_hold()


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_rolled_back_transaction_publishes_nothing(buyer):
    purge_queues()
    alias = shard_for_user(buyer.id)
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        outbox_enqueue(
            using=alias,
            user_id=buyer.id,
            task="apps.orders.tasks.order_placed_notify",
            kwargs={"order_id": "1"},
            queue="notifications",
        )
        raise RuntimeError("the change failed")
    assert not OutboxMessage.objects.using(alias).exists()
    assert outbox_relay() == 0
    assert queue_depth("notifications") == 0


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_concurrent_relays_publish_each_message_once(buyer):
    purge_queues()
    alias = order_shard_aliases()[0]
    with broker_pointing_to(DEAD_BROKER):
        with transaction.atomic(using=alias):
            for i in range(120):
                outbox_enqueue(
                    using=alias,
                    user_id=buyer.id,
                    task="apps.orders.tasks.order_placed_notify",
                    kwargs={"order_id": str(i)},
                    queue="notifications",
                )
        assert background.drain()  # its fast path failed against the dead broker
    broker_health.reset()
    OutboxMessage.objects.using(alias).update(attempts=0, last_error="")
    published = []

    def relay():
        try:
            published.append(outbox_relay(batch_size=10))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=relay) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(published) == 120
    assert set(OutboxMessage.objects.using(alias).values_list("attempts", flat=True)) == {1}
    assert queue_depth("notifications") == 120
    purge_queues()


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_messages_the_background_publisher_never_sent_are_published_by_the_relay(
    buyer, monkeypatch
):
    """The fast path's queue is bounded and lives in memory: a message refused by a full queue,
    or queued in a process that died before its publisher sent it, still goes out once."""
    purge_queues()
    # Given a process whose background publisher holds 2 messages at most and never runs
    # (its process died before publishing them)
    dead = outbox._BackgroundPublisher()
    dead._pid, dead._queue = os.getpid(), queue.Queue(maxsize=2)
    monkeypatch.setattr(outbox, "background", dead)
    alias = shard_for_user(buyer.id)

    # When three messages commit there
    with transaction.atomic(using=alias):
        for i in range(3):
            outbox_enqueue(
                using=alias,
                user_id=buyer.id,
                task="apps.orders.tasks.order_placed_notify",
                kwargs={"order_id": str(i)},
                queue="notifications",
            )

    # Then two wait in its memory, the third was refused, and none is published yet
    assert dead._queue.qsize() == 2
    waiting = OutboxMessage.objects.using(alias).filter(published_at__isnull=True)
    assert waiting.count() == 3
    assert queue_depth("notifications") == 0

    # When the relay runs, all three go out, once each
    assert outbox_relay() == 3
    assert not waiting.exists()
    assert queue_depth("notifications") == 3
    assert outbox_relay() == 0
    purge_queues()
