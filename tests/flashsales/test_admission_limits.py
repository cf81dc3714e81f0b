"""A flash-sale attempt's rate limits are checked in the gate's own Redis call (one round trip):
the same layers as anywhere — system, route, per client, hot SKU — with the same refusals, all
or nothing, and nothing taken at the gate by a refused attempt."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from apps.flashsales import services as flash
from apps.flashsales.gate import gate_state
from tests.factories.catalog import product_with_skus
from tests.flashsales.test_rate_limits import _rule
from tests.orders.conftest import api_client, new_key

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]


@pytest.fixture
def sku():
    sku = product_with_skus(stock=0).skus.get()
    flash.flash_sale_start(sku_code=sku.code, stock=10, per_user_limit=5)
    return sku


def _buyer(name: str):
    return api_client(get_user_model().objects.create_user(name, password="x"))


def _buy(client, sku):
    return client.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                       format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip


def test_the_hot_sku_layer_refuses_the_crowd_before_the_gate(sku):
    # Given one attempt per minute on the SKU
    _rule("hot_sku", 1, 60)

    # When two buyers try
    first, second = _buy(_buyer("a"), sku), _buy(_buyer("b"), sku)

    # Then the second is refused by that layer, and the gate gave out one unit only
    assert first.status_code == 202
    assert second.status_code == 429
    assert second.json()["code"] == "rate_limited"
    assert second.json()["layer"] == "hot_sku"
    assert int(second["Retry-After"]) >= 1
    assert gate_state(sku_id=sku.id).remaining == 9


def test_the_per_client_layer_counts_flash_attempts_and_spares_the_other_layers(sku):
    # Given one write per ten minutes per client, two attempts per minute on the SKU
    _rule("user_writes", 1, 600)
    _rule("hot_sku", 2, 60)
    buyer = _buyer("a")

    # When the buyer tries twice
    assert _buy(buyer, sku).status_code == 202
    refused = _buy(buyer, sku)

    # Then the second is refused by the per-client layer, which used up no hot-SKU budget:
    # another buyer still gets the SKU's second attempt
    assert refused.status_code == 429
    assert refused.json()["layer"] == "user_writes"
    assert gate_state(sku_id=sku.id).remaining == 9
    assert _buy(_buyer("b"), sku).status_code == 202
    assert _buy(_buyer("c"), sku).json()["layer"] == "hot_sku"
