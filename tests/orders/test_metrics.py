"""Metrics from several processes in one scrape, and checkout outcomes counted."""

from __future__ import annotations

import re

import pytest
from prometheus_client import REGISTRY

from apps.flashsales.services import flash_sale_start
from apps.orders import services
from shop.sharding import shard_for_id
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, post_order
from tests.workers import Worker, purge_queues, wait_for

ALL = "__all__"
NOTIFY = "apps.orders.tasks.order_placed_notify"
PROCESS = "apps.orders.tasks.order_process"


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in exposition text (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return None


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_metrics_of_two_worker_processes_appear_in_one_scrape(
    buyer, sku, admin_client, tmp_path, monkeypatch
):
    # Given two Celery workers (separate processes) sharing one multiprocess directory: one
    # consumes notifications, the other order processing
    purge_queues()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    notifier = Worker(queues=["notifications"], **env).start()
    processor = Worker(queues=["order.processing"], **env).start()
    try:
        # When an order is placed (its notification runs on the first) and paid (its
        # processing runs on the second)
        order = services.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        services.order_mark_paid(order_id=order.id, actor="test")
        alias = shard_for_id(order.id)
        wait_for(lambda: services.Order.objects.using(alias).get(id=order.id).status
                 == "processing")  # fmt: skip

        # Then one scrape of /metrics (reading the shared directory, as a web worker would)
        # shows both workers' task counts
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

        def scraped() -> str | None:
            text = admin_client.get("/metrics").content.decode()
            done = _sample(text, "shop_tasks_total", task=NOTIFY, outcome="success")
            return text if done and _sample(text, "shop_tasks_total", task=PROCESS) else None

        text = wait_for(scraped, timeout=30)
    finally:
        notifier.stop()
        processor.stop()
    assert _sample(text, "shop_tasks_total", task=NOTIFY, outcome="success") == 1
    assert _sample(text, "shop_tasks_total", task=PROCESS, outcome="success") == 1
    assert _sample(text, "shop_task_duration_seconds_count", task=PROCESS) == 1
    # … written by two different processes (prometheus-client keeps a file per process)
    writers = {p.stem.rsplit("_", 1)[-1] for p in tmp_path.glob("counter_*.db")}
    assert len(writers) >= 2
    assert_invariants_hold()


def _checkouts(outcome: str, reason: str = "") -> float:
    value = REGISTRY.get_sample_value(
        "shop_checkouts_total", {"outcome": outcome, "reason": reason}
    )
    return value or 0.0


@pytest.mark.django_db(databases=ALL)
def test_checkout_outcomes_are_counted(buyer, sku):
    client = api_client(buyer)
    before = (_checkouts("accepted"), _checkouts("rejected", "out_of_stock"))

    assert post_order(client, [{"sku": sku.code, "quantity": 10}]).status_code == 201
    assert post_order(client, [{"sku": sku.code, "quantity": 1}]).status_code == 409

    assert _checkouts("accepted") == before[0] + 1
    assert _checkouts("rejected", "out_of_stock") == before[1] + 1


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_queued_and_gate_refused_checkouts_are_counted(sku, admin_client):
    # Given the fixture's 10 units on flash sale, one per buyer
    flash_sale_start(sku_code=sku.code, stock=0, per_user_limit=1)
    queued, sold_out = _checkouts("queued"), _checkouts("rejected", "purchase_limit_exceeded")
    first = api_client(UserFactory(username="fast"))

    # When a buyer is admitted, then asks again beyond the per-buyer limit
    assert post_order(first, [{"sku": sku.code, "quantity": 1}]).status_code == 202
    assert post_order(first, [{"sku": sku.code, "quantity": 1}]).status_code == 409

    # Then one ticket was queued and one attempt refused by the gate, and the scrape shows the
    # sale's gate
    assert _checkouts("queued") == queued + 1
    assert _checkouts("rejected", "purchase_limit_exceeded") == sold_out + 1
    text = admin_client.get("/metrics").content.decode()
    assert _sample(text, "shop_flash_sale_units_left", sku=sku.code) == 9
    assert _sample(text, "shop_flash_sale_queued", sku=sku.code) == 1
    assert _sample(text, "shop_flash_sale_gate_answers_total", sku=sku.code, outcome="limit") == 1
