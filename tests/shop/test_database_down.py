"""DESIGN.md §6: with the `default` database down, cached catalog pages still answer and
everything else answers 503 with Retry-After — never a stack trace."""

from __future__ import annotations

import pytest
from django.db import connections

from apps.catalog import selectors
from tests.factories.catalog import product_with_skus


@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_cached_pages_answer_and_the_rest_is_503(client, settings):
    # Given a product page and the API answer already in the cache, stock figures included
    settings.AVAILABILITY_CACHE_TTL = 60
    product = product_with_skus()
    page_url = f"/products/{product.id}/{product.slug}/"
    assert client.get(page_url).status_code == 200
    assert client.get(f"/api/v1/products/{product.id}/").status_code == 200
    assert selectors.product_page().count == 1
    connections.close_all()

    # When the default database goes away
    with _default_database_down():
        page = client.get(page_url)
        api = client.get(f"/api/v1/products/{product.id}/")
        uncached_api = client.get("/api/v1/products/?q=anything")
        uncached_page = client.get("/products/?q=anything")

    # Then cached reads are still served and the others are an honest 503
    assert page.status_code == 200
    assert product.name in page.content.decode()
    assert api.status_code == 200
    assert api.json()["skus"][0]["available"] == 10
    assert uncached_api.status_code == 503
    assert uncached_api.json()["code"] == "service_unavailable"
    assert uncached_api["Retry-After"]
    assert uncached_page.status_code == 503
    assert uncached_page["Retry-After"]
    assert "text/html" in uncached_page["Content-Type"]


class _default_database_down:  # reads as a phrase at the call site
    def __enter__(self):
        self.default = connections["default"]
        self.port = self.default.settings_dict["PORT"]
        self.default.close()
        self.default.settings_dict["PORT"] = 1

    def __exit__(self, *exc):
        self.default.close()
        self.default.settings_dict["PORT"] = self.port


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_checkout_answered_early_is_a_503_too(settings):
    """The early answer (shop.early) runs above the error middleware: a database error while
    it reads the list of sales must still end as the honest 503, not a 500."""
    from django.contrib.auth import get_user_model

    from apps.flashsales.selectors import flash_list
    from shop.authentication import token_cache
    from tests.orders.conftest import api_client, assert_invariants_hold, post_order

    # Given a buyer whose token this process has cached, and a list of sales due for a re-read
    settings.AUTH_TOKEN_CACHE_TTL = 60
    sku = product_with_skus().skus.get()
    client = api_client(get_user_model().objects.create_user("early", password="x"))
    assert post_order(client, [{"sku": sku.code, "quantity": 1}]).status_code == 201
    flash_list.forget()
    connections.close_all()

    # When the default database goes away and the buyer checks out
    try:
        with _default_database_down():
            response = post_order(client, [{"sku": sku.code, "quantity": 1}])
    finally:
        token_cache.clear()

    # Then the answer is the 503 of DESIGN §6, and nothing was left half-written
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "service_unavailable"
    assert_invariants_hold()
