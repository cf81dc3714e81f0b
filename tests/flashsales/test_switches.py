"""Degradation switches: read-only mode, stale pages, non-core widgets."""

from __future__ import annotations

import pytest

from apps.catalog import services
from apps.catalog.models import Sku
from shop.models import Switch
from shop.runtime import runtime_refresh
from tests.factories.catalog import CategoryFactory, product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, new_key

pytestmark = pytest.mark.django_db(databases="__all__")


def _switch(name, on):
    Switch.objects.update_or_create(name=name, defaults={"on": on})
    runtime_refresh()


def test_read_only_mode_refuses_writes_and_shows_a_banner(client):
    sku = product_with_skus().skus.get()
    _switch("read_only", True)
    buyer = api_client(UserFactory(username="ro"))
    refused = buyer.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                         format="json", HTTP_IDEMPOTENCY_KEY=new_key())  # fmt: skip
    assert refused.status_code == 503
    assert refused.json()["code"] == "service_unavailable" and refused["Retry-After"]
    assert "browse-only" in client.get("/").content.decode()
    assert client.get(f"/products/{sku.product_id}/").status_code in (200, 301)
    assert client.post("/cart/add/", {"sku": sku.code}).status_code == 503
    UserFactory(username="ro-op", password="pw-for-ops-1", is_staff=True)
    login = {"username": "ro-op", "password": "pw-for-ops-1"}
    assert client.post("/accounts/login/", login).status_code == 302
    _switch("read_only", False)
    assert buyer.post("/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]},
                      format="json", HTTP_IDEMPOTENCY_KEY=new_key()).status_code == 201  # fmt: skip


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_serve_stale_answers_with_the_last_copy_when_the_page_is_retired(client):
    product = product_with_skus()
    url = f"/products/{product.id}/{product.slug}/"
    first = client.get(url)
    assert "€10.00" in first.content.decode()
    services.sku_price_set(sku=Sku.objects.get(product=product), price=2500)  # retires the page

    _switch("serve_stale", True)
    stale = client.get(url)
    assert stale["X-Page-Cache"] == "stale"
    assert stale.content == first.content
    _switch("serve_stale", False)
    fresh = client.get(url)
    assert fresh["X-Page-Cache"] == "miss" and "€25.00" in fresh.content.decode()


def test_widgets_off_hides_related_products(client):
    category = CategoryFactory()
    product = product_with_skus(category=category, name="Main Thing", slug="main-thing")
    product_with_skus(category=category, name="Sibling Thing", slug="sibling-thing")
    url = f"/products/{product.id}/{product.slug}/"
    assert "Sibling Thing" in client.get(url).content.decode()
    _switch("widgets_off", True)
    from django.core.cache import cache

    from shop.pagecache import page_cache_local_reset

    cache.clear()
    page_cache_local_reset()  # and this process's copy of the shared pages (L1)
    assert "Sibling Thing" not in client.get(url).content.decode()
