"""The in-process sold-out flag: set by the gate's own "sold out" answer, dropped by a message
from any process that gives the gate units again, and never older than FLASH_SOLD_OUT_TTL."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django_redis import get_redis_connection

from apps.flashsales import services as flash
from apps.flashsales.selectors import flash_sold_out
from apps.flashsales.soldout import channel, sold_out_clear
from apps.orders import checkout
from apps.orders.models import CheckoutTicket
from shop.sharding import shard_for_id
from tests.factories.catalog import product_with_skus
from tests.orders.conftest import api_client, new_key
from tests.workers import wait_for

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.django_db(databases="__all__", transaction=True),
]


@pytest.fixture(autouse=True)
def _flags(settings):
    settings.FLASH_SOLD_OUT_TTL = 60
    sold_out_clear()
    yield
    sold_out_clear()


@pytest.fixture
def sold_out():
    """A sale of one unit, admitted to a first buyer; a second buyer refused by the gate, which
    flags the sale sold out in this process."""
    sku = product_with_skus(stock=0).skus.get()
    flash.flash_sale_start(sku_code=sku.code, stock=1, per_user_limit=1)
    first = get_user_model().objects.create_user("first", password="x")
    second = get_user_model().objects.create_user("second", password="x")
    admitted = _buy(api_client(first), sku, new_key())
    assert admitted.status_code == 202
    assert _buy(api_client(second), sku, new_key()).json()["code"] == "out_of_stock"
    assert _flagged(sku, second)
    return sku, second, int(admitted.json()["ticket"])


def _buy(client, sku, key):
    return client.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                       format="json", HTTP_IDEMPOTENCY_KEY=key)  # fmt: skip


def _flagged(sku, buyer) -> bool:
    return flash_sold_out(sku_id=sku.id, user_id=buyer.id, idempotency_key=new_key())


def test_a_message_from_another_process_drops_the_flag(sold_out):
    sku, second, _ = sold_out
    client = get_redis_connection("default")
    # Given this process's listener is subscribed
    wait_for(lambda: dict(client.pubsub_numsub(channel())).get(channel().encode(), 0) >= 1,
             timeout=10)  # fmt: skip

    # When another process announces the SKU (units given back, a rebuild, a restart)
    client.publish(channel(), sku.id)

    # Then the flag goes, well before its TTL
    wait_for(lambda: not _flagged(sku, second), timeout=10)


def test_units_given_back_by_a_rejected_ticket_reopen_the_sale_at_once(sold_out):
    sku, second, ticket_id = sold_out
    # When the admitted ticket is rejected for a reason other than the stock
    ticket = CheckoutTicket.objects.using(shard_for_id(ticket_id)).get(id=ticket_id)
    assert checkout.ticket_reject(ticket, code="internal_error", detail="x", units_back=True)

    # Then the second buyer's next attempt goes to the gate and gets the unit
    assert _buy(api_client(second), sku, new_key()).status_code == 202


def test_the_flag_lapses_after_its_ttl(settings, sold_out):
    sku, second, _ = sold_out
    # Given a flag set under a short TTL
    settings.FLASH_SOLD_OUT_TTL = 0.2
    sold_out_clear()
    assert _buy(api_client(second), sku, new_key()).json()["code"] == "out_of_stock"
    assert _flagged(sku, second)

    # Then it lapses on its own, message or not
    wait_for(lambda: not _flagged(sku, second), timeout=10)
