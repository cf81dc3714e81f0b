"""A flash sale: the Redis gate, the checkout queue and real workers, against PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.db import connections
from django.db.models import Sum

from apps.flashsales.services import flash_sale_start
from apps.inventory.models import Stock
from apps.orders.models import CheckoutTicket, Order, OrderLine
from shop.sharding import order_shard_aliases
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.workers import Worker, purge_queues, wait_for

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.needs_broker,
    pytest.mark.django_db(databases="__all__", transaction=True),
]

USERS, ATTEMPTS_EACH, UNITS, LIMIT = 200, 10, 100, 2


def _tickets(**filters):
    aliases = order_shard_aliases()
    return [t for a in aliases for t in CheckoutTicket.objects.using(a).filter(**filters)]


def _lines(sku):
    aliases = order_shard_aliases()
    return [line for a in aliases for line in OrderLine.objects.using(a).filter(sku_id=sku.id)]


@pytest.fixture
def sale():
    sku = product_with_skus(stock=0).skus.get()
    flash_sale_start(sku_code=sku.code, stock=UNITS, per_user_limit=LIMIT)
    password = make_password("x")
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"fan{i}", password=password) for i in range(USERS)]
    )
    return sku, [api_client(user) for user in users]


def _storm(sku, clients, *, rounds=range(ATTEMPTS_EACH), midway=None):
    outcomes, lock = [], threading.Lock()

    def attempt(client):
        try:
            response = client.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                                   format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip
            with lock:
                outcomes.append((response.status_code, response.json().get("code")))
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=16) as pool:
        for round_no in rounds:
            list(pool.map(attempt, clients))
            if midway is not None and round_no == midway:
                cache.clear()  # Redis flushed mid-sale: every counter is gone
    return outcomes


def _settle(sku):
    worker = Worker().start()
    try:
        wait_for(lambda: not _tickets(status="queued"), timeout=120)
    finally:
        worker.stop()


def _assert_sold_exactly(sku):
    lines = _lines(sku)
    assert sum(line.quantity for line in lines) == UNITS
    per_user = {}
    for line in lines:
        per_user[line.user_id] = per_user.get(line.user_id, 0) + line.quantity
    assert max(per_user.values()) <= LIMIT
    assert len(per_user) >= UNITS // LIMIT
    stock = Stock.objects.get(sku=sku)
    assert (stock.available, stock.reserved) == (0, UNITS)
    assert not _tickets(status="queued")
    assert_invariants_hold()


def test_two_thousand_attempts_for_a_hundred_units_sell_exactly_a_hundred(sale):
    purge_queues()
    sku, clients = sale
    outcomes = _storm(sku, clients)
    assert len(outcomes) == USERS * ATTEMPTS_EACH
    admitted = [o for o in outcomes if o[0] == 202]
    assert len(admitted) == UNITS  # the gate admits exactly the units on sale
    refused = {o for o in outcomes if o[0] != 202}
    assert refused <= {(409, "out_of_stock"), (409, "purchase_limit_exceeded")}
    _settle(sku)
    assert len(_tickets(status="accepted")) == UNITS
    _assert_sold_exactly(sku)


def test_the_same_with_redis_flushed_mid_sale(sale):
    purge_queues()
    sku, clients = sale
    _storm(sku, clients, rounds=range(ATTEMPTS_EACH), midway=0)  # flushed after round one
    _settle(sku)
    _assert_sold_exactly(sku)
    rejected = {t.reject_code for t in _tickets(status="rejected")}
    assert rejected <= {"out_of_stock", "purchase_limit_exceeded"}


def test_the_queue_is_bounded_ordered_and_every_ticket_is_resolved(sale, settings):
    purge_queues()
    sku, clients = sale
    settings.CHECKOUT_QUEUE_BOUND = 5
    body = {"items": [{"sku": sku.code, "quantity": 1}]}
    statuses = [
        c.post("/api/v1/orders/", body, format="json", HTTP_IDEMPOTENCY_KEY=new_key())
        for c in clients[:7]
    ]
    assert [r.status_code for r in statuses] == [202] * 5 + [503] * 2
    assert statuses[5]["Retry-After"] and statuses[5].json()["code"] == "service_unavailable"
    assert len(_tickets()) == 5  # the refused ones left no trace

    tickets = {r.json()["ticket"]: r for r in statuses[:5]}
    poll = clients[0].get(statuses[0].json()["poll"]).json()
    assert poll["status"] == "queued" and poll["position"] == 0
    _settle(sku)
    accepted = sorted(_tickets(status="accepted"), key=lambda t: t.seq)
    assert len(accepted) == 5 and len(tickets) == 5
    order_ids = [t.order_id for t in accepted]
    assert order_ids == sorted(order_ids)  # one worker: orders in arrival order
    done = clients[0].get(statuses[0].json()["poll"]).json()
    assert done["status"] == "accepted" and done["order"] == str(order_ids[0])
    assert_invariants_hold()


def test_a_worker_killed_mid_ticket_resolves_it_once(sale):
    purge_queues()
    sku, clients = sale
    response = clients[0].post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                               format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip
    assert response.status_code == 202
    # The stock row is locked by someone else: the worker's reservation waits on it
    blocker = connections.create_connection("default")
    blocker.set_autocommit(False)
    with blocker.cursor() as cursor:
        cursor.execute("SELECT 1 FROM inventory_stock WHERE sku_id = %s FOR UPDATE", [sku.id])
    first = Worker().start()
    try:
        wait_for(lambda: any("checkout_ticket_process" in line and "received" in line
                             for line in first.output), timeout=60)  # fmt: skip
        first.kill()  # SIGKILL mid-ticket
        blocker.rollback()
        blocker.close()
        second = Worker().start()
        try:
            wait_for(lambda: _tickets(status="accepted"), timeout=90)
        finally:
            second.stop()
    finally:
        first.kill()
    assert len(_tickets(status="accepted")) == 1
    orders = [o for a in order_shard_aliases() for o in Order.objects.using(a).all()]
    assert len(orders) == 1
    assert Stock.objects.get(sku=sku).reserved == 1
    assert_invariants_hold()


def test_a_sold_out_answer_does_not_touch_the_database(sale, django_assert_max_num_queries):
    sku, clients = sale
    from apps.flashsales.gate import gate_load
    from apps.flashsales.selectors import flash_list

    gate_load(sku_id=sku.id, remaining=0, users={}, queued=0, seq=0)
    # The list of SKUs on sale is refreshed per process at most every FLASH_LIST_TTL seconds,
    # not per request: warm it, then a sold-out answer costs only the API token's own lookup.
    assert sku.code in flash_list.get()
    with django_assert_max_num_queries(1):
        response = clients[0].post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                                   format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (409, "out_of_stock")
    first_shard = order_shard_aliases()[0]
    assert Order.objects.using(first_shard).count() == 0
    assert OrderLine.objects.using(first_shard).aggregate(n=Sum("quantity"))["n"] is None
