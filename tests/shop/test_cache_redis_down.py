"""Redis unreachable: pages and API answer 200 from the database, logged and counted."""

from __future__ import annotations

import logging

import pytest

from shop.metrics import CACHE_ERRORS
from tests.factories.catalog import product_with_skus

# A port nothing listens on: connections are refused at once, like a Redis that died.
DEAD_REDIS = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
    }
}


def _errors_total() -> float:
    return sum(
        sample.value
        for metric in CACHE_ERRORS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


@pytest.mark.django_db
def test_pages_and_api_still_answer_from_the_database(client, settings, caplog):
    # Given a catalog and a cache pointed at a closed port
    product = product_with_skus(skus=2)
    category = product.category
    settings.CACHES = DEAD_REDIS
    errors_before = _errors_total()

    # When buyers browse the storefront and the API
    urls = [
        "/",
        "/products/",
        f"/products/?category={category.slug}",
        f"/products/{product.id}/{product.slug}/",
        "/api/v1/products/",
        f"/api/v1/products/{product.id}/",
        "/api/v1/categories/",
    ]
    with caplog.at_level(logging.WARNING, logger="shop.cache"):
        responses = {url: client.get(url) for url in urls}

    # Then every page answers 200 with real data, and the failure was logged and counted
    assert {url: r.status_code for url, r in responses.items()} == dict.fromkeys(urls, 200)
    assert responses[f"/api/v1/products/{product.id}/"].json()["skus"][0]["available"] == 10
    assert product.name in responses[f"/products/{product.id}/{product.slug}/"].content.decode()
    assert _errors_total() > errors_before
    assert "cache unavailable" in caplog.text


@pytest.mark.django_db
def test_a_dead_cache_is_skipped_for_a_while_instead_of_retried_per_request(client, settings):
    product = product_with_skus()
    settings.CACHES = DEAD_REDIS
    settings.CACHE_DOWN_BACKOFF = 60
    client.get(f"/api/v1/products/{product.id}/")
    errors_after_first = _errors_total()

    for _ in range(20):
        assert client.get(f"/api/v1/products/{product.id}/").status_code == 200

    assert _errors_total() == errors_after_first


@pytest.mark.django_db
def test_invalidation_that_cannot_reach_the_cache_is_retried_later(
    settings, django_capture_on_commit_callbacks
):
    from apps.catalog.services import catalog_changed
    from shop.cache import pending_invalidations_retry
    from shop.models import PendingInvalidation

    # Given an edit committed while Redis is unreachable
    product = product_with_skus()
    live_caches = settings.CACHES
    settings.CACHES = DEAD_REDIS
    with django_capture_on_commit_callbacks(execute=True):
        catalog_changed(product_ids=[product.id])
    assert set(PendingInvalidation.objects.values_list("group", flat=True)) == {
        f"product:{product.id}",
        "catalog:listing",
    }

    # When the cache is back and the periodic retry runs
    settings.CACHES = live_caches
    done = pending_invalidations_retry()

    # Then the invalidations went out and nothing is left pending
    assert done == 2
    assert not PendingInvalidation.objects.exists()
