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
