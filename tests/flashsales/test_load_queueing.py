"""Above a configured number of checkouts in flight, ordinary checkouts are queued too; a
request that died mid-checkout stops counting."""

from __future__ import annotations

import time

import pytest
from django.core.cache import cache
from django_redis import get_redis_connection

from apps.orders.checkout import IN_FLIGHT_HORIZON, checkout_in_flight
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, new_key

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]


def _others_in_flight(*, count: int, started: float) -> None:
    """``count`` checkouts of other requests, started at ``started`` (epoch seconds)."""
    key = cache.make_key(checkout_in_flight.key)
    get_redis_connection("default").zadd(key, {f"other-{i}": started for i in range(count)})


def _checkout(sku):
    client = api_client(UserFactory())
    items = [{"sku": sku.code, "quantity": 1}]
    return client.post("/api/v1/orders/", {"items": items}, format="json",
                       HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip


def test_above_the_load_threshold_an_ordinary_checkout_is_queued(settings):
    settings.CHECKOUT_QUEUE_ABOVE_INFLIGHT = 2
    sku = product_with_skus(stock=5).skus.get()
    assert _checkout(sku).status_code == 201  # quiet: placed at once

    _others_in_flight(count=2, started=time.time())  # with this one, 3 > 2 in flight
    queued = _checkout(sku)
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert_invariants_hold()


def test_a_checkout_whose_process_died_stops_counting_after_the_horizon(settings):
    settings.CHECKOUT_QUEUE_ABOVE_INFLIGHT = 2
    sku = product_with_skus(stock=5).skus.get()
    _others_in_flight(count=5, started=time.time() - IN_FLIGHT_HORIZON - 1)  # never finished

    assert _checkout(sku).status_code == 201  # they no longer count ...
    key = cache.make_key(checkout_in_flight.key)
    assert get_redis_connection("default").zcard(key) == 0  # ... and are gone, ours too
    assert_invariants_hold()
