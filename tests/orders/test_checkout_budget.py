"""Work budget of one checkout (issue 13): at most 3 commits and a fixed number of SQL
statements across every database, counted on a real API checkout (DRF test client, services
profile), so a regression fails here and not only in bench/checkout.py."""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from apps.flashsales import selectors as flash_selectors
from apps.inventory.models import Reservation, Stock
from apps.orders.models import Order
from shop.models import IdempotencyRecord, OutboxMessage
from shop.outbox import background
from shop.sharding import shard_for_user
from tests.orders.conftest import api_client, assert_invariants_hold, post_order
from tests.redis_counting import redis_round_trips

ALL = "__all__"
WRITES = ("INSERT", "UPDATE", "DELETE", "WITH")  # a data-modifying CTE starts with WITH

# The budget. Statements: on default the API token's read, the SKU read and the stock
# reservation (one statement for one SKU); on the buyer's shard the idempotency claim, the
# order id, and in one transaction one statement (shop.rowwrites) writing the order with its
# lines and event, its outbox row and the idempotency record's completion.
MAX_COMMITS = 3
MAX_STATEMENTS = 6
MAX_REDIS_ROUND_TRIPS = 3


@dataclass
class WorkCounter:
    """Counts, per alias, the SQL statements sent and the transactions that committed writes.

    A transaction is counted when it commits: a write statement run in autocommit (outside any
    atomic block) is one committed transaction by itself; an atomic block that ran statements
    counts once, when its COMMIT happens (a hook registered with the block's first statement,
    which Django runs only after a successful commit and drops on rollback). Read-only
    statements in autocommit (e.g. drawing the order id) commit nothing and are not counted as
    commits, only as statements. The background outbox publisher's bookkeeping runs on its own
    thread's connections and is deliberately not counted: it is off the request path."""

    statements: Counter[str] = field(default_factory=Counter)
    commits: Counter[str] = field(default_factory=Counter)
    sql: list[tuple[str, str]] = field(default_factory=list)
    redis: list[str] = field(default_factory=list)  # Redis round trips, by command

    def wrapper(self, alias: str):
        connection = connections[alias]

        def committed() -> None:
            self.commits[alias] += 1

        def wrap(execute, sql, params, many, context):
            if connection.in_atomic_block and not any(
                hook[1] is committed for hook in connection.run_on_commit
            ):
                connection.on_commit(committed)
            result = execute(sql, params, many, context)
            self.statements[alias] += 1
            self.sql.append((alias, sql.strip()[:80]))
            if not connection.in_atomic_block and sql.lstrip().upper().startswith(WRITES):
                self.commits[alias] += 1
            return result

        return wrap

    @contextlib.contextmanager
    def counting(self):
        with contextlib.ExitStack() as stack:
            for alias in settings.DATABASES:
                stack.enter_context(connections[alias].execute_wrapper(self.wrapper(alias)))
            self.redis = stack.enter_context(redis_round_trips(this_thread_only=True))
            yield self

    def report(self) -> dict[str, Any]:
        return {"statements": dict(self.statements), "commits": dict(self.commits), "sql": self.sql,
                "redis": self.redis}  # fmt: skip


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_checkout_makes_at_most_three_commits_and_a_fixed_number_of_statements(
    buyer, sku, monkeypatch
):
    # Given a buyer who has checked out once (per-process caches warm: catalog, the list of
    # flash sales -- re-read every FLASH_LIST_TTL, kept for the test's length here so the
    # count does not depend on when an earlier test last read it)
    monkeypatch.setattr(flash_selectors, "FLASH_LIST_TTL", 3600.0)
    flash_selectors.flash_list.forget()
    client = api_client(buyer)
    assert post_order(client, [{"sku": sku.code, "quantity": 1}]).status_code == 201
    background.drain()

    # When they check out again, every statement on every database counted
    with WorkCounter().counting() as work:
        response = post_order(client, [{"sku": sku.code, "quantity": 2}])

    # Then the order stands, with its reservation, its completed key and its outbox row
    assert response.status_code == 201, response.json()
    alias = shard_for_user(buyer.id)
    order = Order.objects.using(alias).get(id=int(response.json()["id"]))
    assert order.total == 2 * sku.price
    assert Reservation.objects.get(order_id=order.id).quantity == 2
    assert Stock.objects.get(sku=sku).reserved == 3
    assert IdempotencyRecord.objects.using(alias).filter(status="completed").count() == 2
    assert OutboxMessage.objects.using(alias).count() == 2

    # and it cost at most 3 commits (the key's claim, the stock, the order) and 6 statements
    assert sum(work.commits.values()) <= MAX_COMMITS, work.report()
    assert sum(work.statements.values()) <= MAX_STATEMENTS, work.report()
    # and 3 Redis round trips: the rate-limit layers (one script), the in-flight count (one
    # pipeline) and its release; the category tree is kept in the process
    assert len(work.redis) <= MAX_REDIS_ROUND_TRIPS, work.report()
    # the broker and the published-bookkeeping are not on the request path: the background
    # publisher records the notification as published afterwards
    assert background.drain()
    assert not OutboxMessage.objects.using(alias).filter(published_at__isnull=True).exists()
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_the_counter_sees_every_commit_of_a_multi_sku_checkout(buyer, sku):
    """The counter itself can fail: a two-SKU checkout takes the atomic reservation path (one
    BEGIN…COMMIT on ``default``), which must be counted as one commit there."""
    from tests.factories.catalog import product_with_skus

    other = product_with_skus(skus=1, stock=10).skus.get()
    client = api_client(buyer)
    assert post_order(client, [{"sku": sku.code, "quantity": 1}]).status_code == 201

    with WorkCounter().counting() as work:
        response = post_order(
            client, [{"sku": sku.code, "quantity": 1}, {"sku": other.code, "quantity": 1}]
        )

    assert response.status_code == 201, response.json()
    alias = shard_for_user(buyer.id)
    # claim (autocommit) + order transaction on the shard; reservation transaction on default
    assert work.commits[alias] == 2, work.report()
    assert work.commits["default"] == 1, work.report()
    assert sum(work.commits.values()) <= MAX_COMMITS
    background.drain()
    assert_invariants_hold()
