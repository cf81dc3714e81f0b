"""Work budgets of a flash-sale admission, counted through the real HTTP path (middleware, token
authentication, DRF, the checkout service): SQL statements on every database alias (the order
shards included) and Redis round trips (a command, a pipeline or a script call is one)."""

from __future__ import annotations

import contextlib
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.test.utils import CaptureQueriesContext

from apps.flashsales import selectors as flash_selectors
from apps.flashsales import services as flash
from apps.flashsales.soldout import sold_out_clear
from shop.authentication import token_cache
from shop.sharding import shard_for_user
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import api_client, new_key
from tests.redis_counting import redis_round_trips

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]

# Round trips of an attempt that reaches the gate: one script checks the system, route,
# per-client and hot-SKU limits and the gate itself.
GATE_ROUND_TRIPS = 1


@pytest.fixture(autouse=True)
def _caches(settings, monkeypatch):
    # The token cache and the sold-out flag are the subject: on, and long enough that no
    # entry lapses during a test.
    settings.AUTH_TOKEN_CACHE_TTL = 60
    settings.FLASH_SOLD_OUT_TTL = 60
    # The list of sales is re-read every FLASH_LIST_TTL seconds: not during a test.
    monkeypatch.setattr(flash_selectors, "FLASH_LIST_TTL", 60.0)
    token_cache.clear()
    sold_out_clear()
    yield
    token_cache.clear()
    sold_out_clear()


@pytest.fixture
def work():
    """Counts of the work done inside ``with work.counted():`` (all threads)."""

    class Work:
        def __init__(self) -> None:
            self.redis = 0
            self.sql: Counter[str] = Counter()  # statements by alias
            self.commits: Counter[str] = Counter()  # transactions by alias
            self.statements: list[str] = []

        @contextlib.contextmanager
        def counted(self):
            self.redis, self.sql, self.commits, self.statements = 0, Counter(), Counter(), []
            with contextlib.ExitStack() as stack:
                captured = {
                    alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
                    for alias in connections
                }
                trips = stack.enter_context(redis_round_trips())
                yield self
            self.redis = len(trips)
            for alias, queries in captured.items():
                for query in queries.captured_queries:
                    if query["sql"] == "COMMIT":
                        self.commits[alias] += 1
                    elif query["sql"] not in ("BEGIN", "ROLLBACK"):
                        self.sql[alias] += 1
                        self.statements.append(query["sql"][:100])

    return Work()


def _sale(units: int, limit: int):
    sku = product_with_skus(stock=0).skus.get()
    flash.flash_sale_start(sku_code=sku.code, stock=units, per_user_limit=limit)
    return sku


def _buyer(name: str):
    return api_client(get_user_model().objects.create_user(name, password="x"))


def _buy(client, sku, key):
    return client.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                       format="json", HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip


def test_a_refusal_after_the_sell_out_touches_nothing_remote(work):
    # Given a sale of one unit, admitted to a first buyer, and a second buyer refused by the
    # gate (which flags the sale sold out in this process)
    sku = _sale(units=1, limit=1)
    first, second = _buyer("first"), _buyer("second")
    first_key = new_key()
    admitted = _buy(first, sku, first_key)
    assert admitted.status_code == 202
    assert _buy(second, sku, new_key()).json()["code"] == "out_of_stock"

    # When the second buyer tries again
    with work.counted():
        refused = _buy(second, sku, new_key())

    # Then the answer is the same refusal, without one SQL statement or Redis command
    assert refused.status_code == 409
    assert refused.json()["code"] == "out_of_stock"
    assert work.sql == {}
    assert work.commits == {}
    assert work.redis == 0

    # And the admitted attempt's retry still gets its own answer (the gate replays it)
    replay = _buy(first, sku, first_key)
    assert replay.status_code == 202
    assert replay.json()["ticket"] == admitted.json()["ticket"]


def test_a_refusal_at_the_gate_makes_no_sql(work):
    # Given a buyer who holds the most the sale allows (and whose token this process knows)
    sku = _sale(units=10, limit=1)
    buyer = _buyer("buyer")
    assert _buy(buyer, sku, new_key()).status_code == 202

    # When the buyer tries for another
    with work.counted():
        refused = _buy(buyer, sku, new_key())

    # Then the gate refuses it: no SQL anywhere, and the gate's round trips only
    assert refused.status_code == 409
    assert refused.json()["code"] == "purchase_limit_exceeded"
    assert work.sql == {}
    assert work.redis == GATE_ROUND_TRIPS


def test_an_admission_writes_the_ticket_and_nothing_else(work):
    # Given a sale and a buyer this process has seen
    sku = _sale(units=10, limit=2)
    buyer = _buyer("buyer")
    assert _buy(buyer, sku, new_key()).status_code == 202
    shard = shard_for_user(get_user_model().objects.get(username="buyer").pk)

    # When the buyer is admitted again
    with work.counted():
        admitted = _buy(buyer, sku, new_key())

    # Then only the buyer's shard is written: the key's claim; then the ticket's id, the
    # ticket, its outbox message and the key's stored answer in one transaction; then the
    # message marked published
    assert admitted.status_code == 202
    assert set(work.sql) == {shard}, work.statements
    assert work.commits[shard] <= 2, work.statements
    assert work.sql[shard] <= 6, work.statements
    assert work.redis == GATE_ROUND_TRIPS
