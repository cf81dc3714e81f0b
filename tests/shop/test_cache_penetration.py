"""Cached "not found": scans of missing ids do not reach the database."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.catalog import selectors
from apps.catalog.services import catalog_changed
from shop.runtime import runtime_defaults
from tests.factories.catalog import ProductFactory, product_with_skus

MISSING_ID = 987_654_321


@pytest.mark.django_db
def test_a_thousand_lookups_of_a_missing_id_cost_one_query(client, settings):
    # Given a catalog without product 987654321 (and a per-endpoint limit above this loop's
    # rate: the test is about the cache, and 1,000 requests in well under a second would
    # rightly trip the default 1,000/s endpoint limit)
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "endpoint": (100_000, 1, 100_000)}
    runtime_defaults()
    product_with_skus()

    # When the API is asked for it a thousand times
    with CaptureQueriesContext(connection) as queries:
        statuses = {client.get(f"/api/v1/products/{MISSING_ID}/").status_code for _ in range(1000)}

    # Then every answer is 404 and the database was asked once (the category tree is loaded
    # with that first miss, so count the product lookups themselves)
    assert statuses == {404}
    product_lookups = [q for q in queries.captured_queries if '"catalog_product"' in q["sql"]]
    assert len(product_lookups) == 1
    assert len(queries.captured_queries) <= 2


@pytest.mark.django_db
def test_storefront_missing_product_is_cached_too(client, django_assert_num_queries):
    product_with_skus()
    client.get(f"/products/{MISSING_ID}/")  # first miss loads and caches "not found"

    with django_assert_num_queries(0):
        for _ in range(100):
            assert client.get(f"/products/{MISSING_ID}/").status_code == 404


@pytest.mark.django_db
def test_ids_that_cannot_exist_touch_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert selectors.product_detail(0) is None
        assert selectors.product_detail(-5) is None
        assert selectors.product_detail(2**64) is None


@pytest.mark.django_db
def test_a_product_created_after_a_cached_miss_is_visible_at_once(
    django_capture_on_commit_callbacks,
):
    # Given a cached "not found" for the next id
    category_product = product_with_skus()
    next_id = category_product.id + 1
    assert selectors.product_detail(next_id) is None

    # When a product with that id is created and the catalog invalidated on commit
    with django_capture_on_commit_callbacks(execute=True):
        created = ProductFactory(id=next_id, category=category_product.category)
        catalog_changed(product_ids=[created.id])

    # Then it is found, not the cached miss
    document = selectors.product_detail(next_id)
    assert document is not None and document["id"] == next_id
