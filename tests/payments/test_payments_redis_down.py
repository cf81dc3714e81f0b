"""Payments keep working through a Redis outage (DESIGN §6): the limits fall back to the
per-process limit, breakers and channel health to per-process state, and money safety never
depended on Redis (fences, idempotency and the ledger are in PostgreSQL)."""

from __future__ import annotations

import pytest

from apps.orders import services as orders
from apps.orders.models import Order
from shop.sharding import shard_for_id
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.shop.test_cache_redis_down import DEAD_REDIS

ALL = "__all__"


def _pay(client, order_id, method: str):
    return client.post(f"/api/v1/orders/{order_id}/payments/", {"method": method},
                       format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip


def _status(order_id) -> str:
    return Order.objects.using(shard_for_id(order_id)).get(id=order_id).status


@pytest.mark.django_db(databases=ALL)
def test_wallet_and_card_payments_and_a_buyer_cancel_work_while_redis_is_down(
    acquirer, channels, processing_held, shopper, order, settings
):
    # Given a second unpaid order, and Redis unreachable (a closed port)
    code = order.lines.get().sku_code
    card_order = orders.order_place(user_id=shopper.id, items=[{"sku": code, "quantity": 1}])
    settings.CACHES = DEAD_REDIS
    client = api_client(shopper)

    # When the buyer pays one order from the wallet and the other by card
    wallet = _pay(client, order.id, "wallet")
    card = _pay(client, card_order.id, "card")

    # Then both succeed and both orders are paid
    assert wallet.status_code == 201, wallet.json()
    assert wallet.json()["status"] == "succeeded"
    assert card.status_code == 201, card.json()
    assert card.json()["status"] == "succeeded"
    assert _status(order.id) == "paid" and _status(card_order.id) == "paid"

    # And the buyer can still cancel a paid order (refunded to the wallet)
    cancel = client.post(f"/api/v1/orders/{order.id}/cancel/", HTTP_IDEMPOTENCY_KEY=new_key())
    assert cancel.status_code == 200, cancel.json()
    assert cancel.json()["status"] == "cancelled"
    assert cancel.json()["payments"][0]["refunded_amount"] == 3000
    assert_invariants_hold()
