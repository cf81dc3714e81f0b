"""Structured logs: the log context, request ids, both formats, and the ids' way into tasks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from celery import shared_task, signals
from django.conf import settings
from django.db import transaction

from shop.logs import (
    CELERY_HEADER,
    JsonFormatter,
    LogContextFilter,
    ReadableFormatter,
    log_context,
    log_context_bind,
    log_context_current,
)
from shop.models import OutboxMessage
from shop.outbox import outbox_enqueue
from shop.sharding import shard_for_user
from tests.config.test_settings_profiles import PRODUCTION_ENV
from tests.config.test_settings_profiles import _run as run_python
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, new_key
from tests.workers import purge_queues

ALL = "__all__"
BIG_ID = 2**62 + 12345  # order and payment ids are 64-bit: beyond a double's exact range
logger = logging.getLogger("tests.shop.test_logs")


class _JsonLines(logging.Handler):
    """What a production handler writes, parsed back."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.addFilter(LogContextFilter())
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        assert "\n" not in text
        self.lines.append(json.loads(text))


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, Any]]]:
    handler = _JsonLines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler.lines
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def sku(db):
    return product_with_skus(skus=1, stock=10).skus.get()


@shared_task(name="tests.shop.test_logs.context_probe")
def context_probe(order_id: str | None = None) -> dict[str, str]:
    logger.info("probe")
    return log_context_current()


# --- The context --------------------------------------------------------------------------------


def test_a_block_adds_ids_and_restores_exactly_what_was_there_before():
    log_context_bind(request_id="r1", user_id=7)
    with log_context(order_id=BIG_ID, user_id=None):
        assert log_context_current() == {"request_id": "r1", "order_id": str(BIG_ID)}
        log_context_bind(payment_id=5)
    assert log_context_current() == {"request_id": "r1", "user_id": "7"}
    with pytest.raises(ValueError, match="unknown log context field"):
        log_context_bind(colour="blue")


# --- Formats ------------------------------------------------------------------------------------


def test_json_lines_parse_and_carry_the_ids_that_are_set(log_lines):
    logger.info("outside")
    with log_context(request_id="r1", user_id=7, order_id=BIG_ID, payment_id=BIG_ID + 1):
        logger.warning("inside %s", "a request")
        logger.info("explicit", extra={"order_id": "42"})

    outside, inside, explicit = log_lines
    assert outside == {
        "ts": outside["ts"],
        "level": "INFO",
        "logger": "tests.shop.test_logs",
        "message": "outside",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outside["ts"])
    assert datetime.fromisoformat(outside["ts"]).utcoffset().total_seconds() == 0
    assert inside["message"] == "inside a request"
    assert inside["level"] == "WARNING"
    assert (inside["request_id"], inside["user_id"]) == ("r1", "7")
    assert (inside["order_id"], inside["payment_id"]) == (str(BIG_ID), str(BIG_ID + 1))
    assert explicit["order_id"] == "42"  # an id given with the record wins


def test_json_lines_include_the_traceback(log_lines):
    with log_context(order_id=1):
        try:
            {}["missing"]
        except KeyError:
            logger.exception("could not %s", "look it up")
    (line,) = log_lines
    assert line["message"] == "could not look it up"
    assert line["level"] == "ERROR"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'missing'" in line["exc"]
    assert line["order_id"] == "1"


def test_readable_lines_show_the_ids_between_logger_and_message():
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "paid %s", ("€15",), None)
    with log_context(request_id="ab12", user_id=7, order_id=123, task="apps.orders.tasks.x"):
        text = ReadableFormatter().format(record)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    tests\.shop\.test_logs "
        r"\[req=ab12 user=7 order=123 task=x\]: paid €15",
        text,
    ), text
    plain = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "idle", (), None)
    assert ReadableFormatter().format(plain).endswith(" INFO    tests.shop.test_logs: idle")


LOG_A_LINE = """
import django, logging
django.setup()
from shop.logs import log_context
with log_context(request_id="r1", order_id=5):
    logging.getLogger("apps.orders.services").warning("hello")
"""


@pytest.mark.parametrize(
    ("profile", "env"),
    [
        ("development", {}),
        ("production", PRODUCTION_ENV),
        ("development, asking for json", {"LOG_FORMAT": "json"}),
    ],
)
def test_production_logs_json_lines_and_development_readable_ones(profile, env, tmp_path):
    result = run_python({"SHOP_VAR_DIR": str(tmp_path), **env}, "-c", LOG_A_LINE)
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    if profile == "development":
        assert line.endswith(" WARNING apps.orders.services [req=r1 order=5]: hello")
    else:
        parsed = json.loads(line)
        assert (parsed["message"], parsed["request_id"], parsed["order_id"]) == ("hello", "r1", "5")


# --- Requests -----------------------------------------------------------------------------------


def test_a_sane_incoming_request_id_is_echoed(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.2:checkout_01")
    assert response["X-Request-ID"] == "lb-7f3a.2:checkout_01"


@pytest.mark.parametrize(
    "incoming",
    [
        None,
        "",
        "x" * 65,
        "abc\ndef",
        "abc\n",  # a trailing newline slips past a careless `$`
        "forged\r\nX-Admin: 1",
        "has space",
        'quote"d',
        "ünïcode",
    ],
)
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(client, incoming):
    headers = {} if incoming is None else {"HTTP_X_REQUEST_ID": incoming}
    response = client.get("/healthz", **headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"])
    assert response["X-Request-ID"] != incoming
    assert client.get("/healthz")["X-Request-ID"] != response["X-Request-ID"]


@pytest.mark.django_db(databases=ALL, transaction=True)
def test_every_line_logged_during_a_request_carries_its_id(log_lines, sku):
    buyer = UserFactory(username="logs-buyer")
    log_lines.clear()
    # Given a checkout with a request id (on_commit runs: the notification is published, and
    # in the embedded profile runs inline, within the request)
    response = api_client(buyer).post(
        "/api/v1/orders/",
        {"items": [{"sku": sku.code, "quantity": 1}]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
        HTTP_X_REQUEST_ID="checkout-1",
    )
    assert response.status_code == 201, response.json()
    order_id = response.json()["id"]
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        purge_queues()  # nobody consumes it here

    # Then every line of the request carries its id, and once the order exists its id too
    assert log_lines
    assert {line.get("request_id") for line in log_lines} == {"checkout-1"}
    placed = [line for line in log_lines if line["message"].startswith(f"order {order_id} placed")]
    # logged after the notification was published (or, eagerly, ran): the request's ids
    # survived the task
    assert placed == [
        {
            **placed[0],
            "request_id": "checkout-1",
            "user_id": str(buyer.id),
            "order_id": order_id,
        }
    ]
    assert "task" not in placed[0]
    for line in log_lines:
        if line.get("task"):
            assert line["order_id"] == order_id
    # and nothing is left behind for whatever this thread does next
    assert log_context_current() == {}


@pytest.mark.django_db(databases=ALL)
def test_a_refusal_logged_after_the_middleware_returned_still_carries_the_id(client, log_lines):
    response = client.get("/api/v1/orders/1/", HTTP_X_REQUEST_ID="lost-1")
    assert response.status_code in {401, 403}
    assert response["X-Request-ID"] == "lost-1"
    # Django logs 4xx responses once the middleware chain has returned
    refusal = [line for line in log_lines if line["logger"] == "django.request"]
    assert refusal and all(line["request_id"] == "lost-1" for line in refusal)


@pytest.mark.django_db(databases=ALL)
def test_a_session_user_is_bound_too(client, log_lines, sku):
    user = UserFactory(username="logs-browser")
    client.force_login(user)
    client.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    log_lines.clear()
    response = client.post("/checkout/", {"checkout_key": "logs-1"}, HTTP_X_REQUEST_ID="web-1")
    assert response.status_code == 302
    placed = [line for line in log_lines if " placed: " in line["message"]]
    assert [(line["request_id"], line["user_id"]) for line in placed] == [("web-1", str(user.id))]


# --- Tasks --------------------------------------------------------------------------------------


def test_an_eager_task_logs_with_the_callers_ids_and_gives_them_back(log_lines):
    with log_context(request_id="req-1", user_id=7):
        result = context_probe.apply(kwargs={"order_id": "42"})
        assert log_context_current() == {"request_id": "req-1", "user_id": "7"}
    assert result.get() == {
        "request_id": "req-1",
        "user_id": "7",
        "order_id": "42",  # what the task is about, from its kwargs
        "task": context_probe.name,
        "task_id": result.id,
    }
    (probe,) = [line for line in log_lines if line["message"] == "probe"]
    assert (probe["request_id"], probe["order_id"]) == ("req-1", "42")
    assert (probe["task"], probe["task_id"]) == (context_probe.name, result.id)


def test_a_task_takes_its_ids_from_the_message_header_not_from_who_runs_it():
    carried = {"request_id": "checkout-9", "user_id": "3", "order_id": "99", "task": "other"}
    with log_context(request_id="relay-run", payment_id=1):
        result = context_probe.apply(headers={CELERY_HEADER: carried})
        assert log_context_current() == {"request_id": "relay-run", "payment_id": "1"}
    assert result.get() == {
        "request_id": "checkout-9",
        "user_id": "3",
        "order_id": "99",
        "task": context_probe.name,
        "task_id": result.id,
    }


def test_publishing_puts_the_callers_ids_in_the_message_header_unless_given():
    headers: dict[str, Any] = {}
    given = {CELERY_HEADER: {"request_id": "stored"}}
    with log_context(request_id="r1", order_id=5, task="some.task", task_id="t1"):
        signals.before_task_publish.send(sender="x", body=(), headers=headers)
        signals.before_task_publish.send(sender="x", body=(), headers=given)
    assert headers == {CELERY_HEADER: {"request_id": "r1", "order_id": "5"}}
    assert given == {CELERY_HEADER: {"request_id": "stored"}}


@pytest.mark.django_db(databases=ALL)
def test_an_outbox_row_keeps_the_context_of_the_change_that_wrote_it():
    alias = shard_for_user(1)
    ids = {"request_id": "r1", "user_id": 1, "order_id": BIG_ID, "task": "t", "task_id": "t1"}
    with log_context(**ids), transaction.atomic(using=alias):
        message = outbox_enqueue(
            using=alias,
            user_id=1,
            task="apps.orders.tasks.order_placed_notify",
            kwargs={"order_id": str(BIG_ID)},
            queue="notifications",
        )
    stored = OutboxMessage.objects.using(alias).get(id=message.id).context
    assert stored == {"request_id": "r1", "user_id": "1", "order_id": str(BIG_ID)}


@pytest.mark.django_db(databases=ALL)
def test_a_new_order_drops_the_payment_id_of_an_earlier_one(log_lines, sku):
    # Given a long-lived context (a script, a task placing several orders) that paid before
    from apps.orders.services import order_place

    buyer = UserFactory(username="logs-loop")
    with log_context(order_id=BIG_ID, payment_id=BIG_ID + 1):
        # When it places another order
        order = order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])

        # Then the order's line names the new order and no payment
        placed = [line for line in log_lines if line["message"].startswith(f"order {order.id}")]
        assert placed and placed[0]["order_id"] == str(order.id)
        assert "payment_id" not in placed[0]
    if not settings.CELERY_TASK_ALWAYS_EAGER:
        purge_queues()
