"""The gate's edges: failed ticket writes, rebuilds in progress, refusals under one key,
rejections for another item, drift the repair job must heal, tickets that keep failing."""

from __future__ import annotations

import contextlib

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connections

from apps.flashsales import selectors as flash_selectors
from apps.flashsales import services as flash
from apps.flashsales.gate import gate_give_back, gate_load, gate_state
from apps.orders import checkout
from apps.orders.models import CheckoutTicket, Order
from apps.orders.tasks import checkout_ticket_process
from shop.locks import OwnedLock
from shop.sharding import order_shard_aliases, shard_for_user
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import api_client, assert_invariants_hold, new_key

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]

UNITS, LIMIT = 10, 3


@pytest.fixture
def sale():
    sku = product_with_skus(stock=0).skus.get()
    flash.flash_sale_start(sku_code=sku.code, stock=UNITS, per_user_limit=LIMIT)
    buyer = get_user_model().objects.create_user("fan", password="x")
    return sku, buyer


def _buy(client, sku, key, quantity=1, extra=()):
    items = [{"sku": sku.code, "quantity": quantity}, *extra]
    return client.post("/api/v1/orders/", {"items": items}, format="json",
                       HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip


def _tickets(**filters):
    return [
        t for a in order_shard_aliases() for t in CheckoutTicket.objects.using(a).filter(**filters)
    ]


def _orders():
    return sum(Order.objects.using(a).count() for a in order_shard_aliases())


@contextlib.contextmanager
def _ticket_inserts_refused(alias):
    """The shard refuses ticket inserts (a trigger: a real database error)."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_tickets() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER refuse_tickets BEFORE INSERT ON orders_checkoutticket "
            "FOR EACH ROW EXECUTE FUNCTION refuse_tickets()"
        )
    try:
        yield
    finally:
        with connections[alias].cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse_tickets ON orders_checkoutticket")
            cursor.execute("DROP FUNCTION refuse_tickets()")


def test_a_retry_after_a_failed_ticket_write_is_admitted_afresh(sale):
    sku, buyer = sale
    client, key = api_client(buyer), new_key()
    client.raise_request_exception = False  # answer as the server would: 500
    # When the ticket cannot be written, the attempt fails and the gate takes nothing
    with _ticket_inserts_refused(shard_for_user(buyer.id)):
        failed = _buy(client, sku, key)
    assert failed.status_code == 500
    assert not _tickets()
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued, state.users) == (UNITS, 0, {})

    # Then the buyer's retry with the same key is admitted for real: units, place in line
    retried = _buy(client, sku, key)
    assert retried.status_code == 202, retried.json()
    assert len(_tickets(status="queued")) == 1
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued, state.users) == (UNITS - 1, 1, {buyer.id: 1})
    assert_invariants_hold()


def test_while_another_process_rebuilds_the_gate_buyers_wait_and_skip_no_queue(sale):
    sku, buyer = sale
    cache.clear()  # Redis flushed mid-sale: the counters are gone
    lock = OwnedLock(f"gate-rebuild:{sku.id}", ttl=30)
    assert lock.acquire()  # another process is rebuilding them
    try:
        response = _buy(api_client(buyer), sku, new_key())
    finally:
        lock.release()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert _orders() == 0 and not _tickets()

    # Once the rebuild is done (here: by this attempt), buyers are queued again
    assert _buy(api_client(buyer), sku, new_key()).status_code == 202
    assert_invariants_hold()


def test_the_same_key_gets_the_same_refusal_after_stock_returns(sale):
    sku, buyer = sale
    client, key = api_client(buyer), new_key()
    gate_load(sku_id=sku.id, remaining=0, users={}, queued=0, seq=0)  # sold out at the gate
    first = _buy(client, sku, key)
    assert (first.status_code, first.json()["code"]) == (409, "out_of_stock")
    flash.flash_sale_repair(sku_id=sku.id)  # the units are back at the gate
    assert gate_state(sku_id=sku.id).remaining == UNITS

    again = _buy(client, sku, key)
    assert (again.status_code, again.json()["code"]) == (409, "out_of_stock")
    assert _buy(client, sku, new_key()).status_code == 202  # a new attempt is a new answer
    assert_invariants_hold()


def test_a_ticket_rejected_for_another_sold_out_item_returns_the_gates_units(sale):
    sku, buyer = sale
    other = product_with_skus(stock=0).skus.get()  # sold out, not on sale
    response = _buy(api_client(buyer), sku, new_key(), extra=[{"sku": other.code, "quantity": 1}])
    assert response.status_code == 202
    (ticket,) = _tickets(status="queued")

    assert checkout.ticket_process(ticket_id=ticket.id) == "rejected"
    rejected = CheckoutTicket.objects.using(shard_for_user(buyer.id)).get(id=ticket.id)
    assert rejected.reject_code == "out_of_stock"
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued, state.users) == (UNITS, 0, {})
    assert_invariants_hold()


def test_the_repair_job_heals_a_lost_give_back_once_the_sale_is_idle(sale):
    sku, buyer = sale
    assert _buy(api_client(buyer), sku, new_key()).status_code == 202
    (ticket,) = _tickets(status="queued")
    # The ticket is rejected but its give-back to the gate is lost (a crash in between)
    CheckoutTicket.objects.using(shard_for_user(buyer.id)).filter(id=ticket.id).update(
        status="rejected", reject_code="invalid_items"
    )
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued) == (UNITS - 1, 1)

    # The first check cannot tell the leak from an admission still writing its ticket ...
    assert flash.flash_sale_repair(sku_id=sku.id) is False
    # ... the next one, with nobody admitted in between, heals it
    assert flash.flash_sale_repair(sku_id=sku.id) is True
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued, state.users) == (UNITS, 0, {})
    assert_invariants_hold()


def test_a_ticket_that_keeps_failing_ends_rejected_and_returns_its_units(sale, monkeypatch):
    sku, buyer = sale
    assert _buy(api_client(buyer), sku, new_key()).status_code == 202
    (ticket,) = _tickets(status="queued")
    calls = []

    def broken(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("a bug in order placement")

    monkeypatch.setattr("apps.orders.services.order_place", broken)
    # run in-process, retries included (as a worker would, minus the 5 s countdowns)
    conf = checkout_ticket_process.app.conf
    propagates, conf.task_eager_propagates = conf.task_eager_propagates, False
    try:
        checkout_ticket_process.apply(args=[str(ticket.id)])
    finally:
        conf.task_eager_propagates = propagates

    assert len(calls) == 4  # the first attempt and three retries
    ended = CheckoutTicket.objects.using(shard_for_user(buyer.id)).get(id=ticket.id)
    assert (ended.status, ended.reject_code) == ("rejected", "internal_error")
    state = gate_state(sku_id=sku.id)
    assert (state.remaining, state.queued, state.users) == (UNITS, 0, {})
    assert_invariants_hold()


def test_a_give_back_forgets_the_attempt_only_when_asked(sale):
    sku, buyer = sale
    client, key = api_client(buyer), new_key()
    assert _buy(client, sku, key).status_code == 202
    # A give-back without the key (the ticket was written) keeps the replay marker ...
    gate_give_back(sku_id=sku.id, user_id=buyer.id, quantity=1, was_queued=True)
    replay = _buy(client, sku, key)
    assert replay.status_code == 202 and replay.headers.get("Idempotent-Replayed")
    assert len(_tickets()) == 1
    assert_invariants_hold()


def test_the_per_buyer_limit_is_the_skus_own_and_a_change_reaches_the_gate(sale):
    sku, buyer = sale
    client = api_client(buyer)
    for _ in range(LIMIT):
        assert _buy(client, sku, new_key()).status_code == 202
    refused = _buy(client, sku, new_key())
    assert (refused.status_code, refused.json()["code"]) == (409, "purchase_limit_exceeded")

    # An operator raises the SKU's limit in the catalog mid-sale: the gate follows
    sku.per_user_limit = LIMIT + 1
    sku.save(update_fields=["per_user_limit"])
    # (each process re-reads the list every FLASH_LIST_TTL seconds)
    flash_selectors.flash_list.forget()
    assert _buy(client, sku, new_key()).status_code == 202
    (status,) = flash_selectors.flash_sales_status()
    assert status.per_user_limit == LIMIT + 1
    assert_invariants_hold()
