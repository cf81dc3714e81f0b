"""One order followed end to end: the request id of the web request that caused a task shows up
in the log lines of the real worker that ran it, whoever published the task."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from celery import current_app

from apps.payments.services.ledger import wallet_topup
from shop.logs import log_context
from shop.outbox import background, broker_health
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.workers import Worker, broker_pointing_to, purge_queues, wait_for

ALL = "__all__"
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1//"
NOTIFY = "apps.orders.tasks.order_placed_notify"
PROCESS = "apps.orders.tasks.order_process"
RELAY = "shop.tasks.outbox_relay"
pytestmark = [
    pytest.mark.needs_broker,
    pytest.mark.needs_postgres,
    pytest.mark.django_db(databases=ALL, transaction=True),
]


@pytest.fixture(autouse=True)
def _broker_considered_up():
    broker_health.reset()
    yield
    broker_health.reset()


def _json_lines(worker: Worker) -> list[dict[str, Any]]:
    """The worker's log lines (LOG_FORMAT=json); the startup banner is not JSON."""
    lines = []
    for text in list(worker.output):
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def _finished(worker: Worker, task: str, **ids: str) -> dict[str, Any] | None:
    """Celery's "Task … succeeded" line of ``task`` carrying ``ids``, once it is there."""
    for line in _json_lines(worker):
        if (
            line.get("task") == task
            and "succeeded" in line["message"]
            and all(line.get(name) == value for name, value in ids.items())
        ):
            return line
    return None


def _request_id() -> str:
    return f"test-{uuid.uuid4().hex}"


def _place_order(client, sku, request_id: str):
    return client.post(
        "/api/v1/orders/",
        {"items": [{"sku": sku.code, "quantity": 1}]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
        HTTP_X_REQUEST_ID=request_id,
    )


def test_an_orders_request_id_appears_in_the_log_lines_of_the_worker_that_processed_it(buyer, sku):
    purge_queues()
    wallet_topup(user_id=buyer.id, amount=10_000, currency="EUR", reference="t:logs",
                 actor="test")  # fmt: skip
    client = api_client(buyer)
    placed_by, paid_by = _request_id(), _request_id()
    worker = Worker(LOG_FORMAT="json").start()
    try:
        # Given a buyer who checks out through the API with a request id of their own
        placed = _place_order(client, sku, placed_by)
        assert placed.status_code == 201, placed.json()
        assert placed["X-Request-ID"] == placed_by
        order_id = placed.json()["id"]

        # Then the worker's line for the notification the order caused carries that request
        # id, the order id and the buyer
        notified = wait_for(
            lambda: _finished(worker, NOTIFY, request_id=placed_by, order_id=order_id)
        )
        assert notified["user_id"] == str(buyer.id)

        # When the buyer pays in another request
        paid = client.post(
            f"/api/v1/orders/{order_id}/payments/",
            {"method": "wallet"},
            format="json",
            HTTP_IDEMPOTENCY_KEY=new_key(),
            HTTP_X_REQUEST_ID=paid_by,
        )
        assert paid.status_code == 201, paid.json()
        payment_id = paid.json()["id"]

        # Then the order's processing in the worker carries the payment request's id, the
        # order and the payment
        processed = wait_for(
            lambda: _finished(worker, PROCESS, request_id=paid_by, order_id=order_id)
        )
        assert processed["payment_id"] == payment_id
        assert processed["user_id"] == str(buyer.id)
    finally:
        worker.stop()

    # Celery's own "received" line names the same task, so it joins the story too
    lines = _json_lines(worker)
    assert any(
        line.get("task_id") == notified["task_id"] and "received" in line["message"]
        for line in lines
    )
    # and the worker's other lines say nothing of this order
    assert all(
        line.get("order_id") == order_id for line in lines if line.get("request_id") == placed_by
    )
    assert_invariants_hold()


def test_a_task_the_relay_publishes_later_still_carries_the_original_request_id(
    buyer, sku, settings
):
    purge_queues()
    request_id = _request_id()
    # Given an order placed while the broker is unreachable: its notification waits
    with broker_pointing_to(DEAD_BROKER):
        placed = _place_order(api_client(buyer), sku, request_id)
        assert background.drain()  # the fast path (background publisher) met the dead broker
    assert placed.status_code == 201, placed.json()
    order_id = placed.json()["id"]
    broker_health.reset()

    # When the relay runs later in the worker, itself started under another request id
    worker = Worker(LOG_FORMAT="json", OUTBOX_RELAY_GRACE="0").start()
    try:
        with log_context(request_id="beat-tick"):
            current_app.send_task(RELAY, queue=settings.CELERY_TASK_DEFAULT_QUEUE)
        relayed = wait_for(lambda: _finished(worker, RELAY, request_id="beat-tick"))

        # Then the notification it published logs with the checkout's request id, not the
        # relay's
        notified = wait_for(
            lambda: _finished(worker, NOTIFY, request_id=request_id, order_id=order_id)
        )
    finally:
        worker.stop()
    assert notified["user_id"] == str(buyer.id)
    assert "order_id" not in relayed
    assert {
        line.get("request_id") for line in _json_lines(worker) if line.get("task") == NOTIFY
    } == {request_id, None}  # None: Celery's "received" line, logged before the task starts
    assert_invariants_hold()
