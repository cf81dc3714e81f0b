"""Invalidation after commit: never stale after an edit commits; rollbacks change nothing."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache import cache
from django.db import connections, transaction

from apps.catalog import selectors, services
from apps.catalog.models import Sku
from shop.cache import versioned_key
from tests.factories.catalog import product_with_skus


def _price(product_id: int) -> int:
    return selectors.product_detail(product_id, with_availability=False)["skus"][0]["price"]


@pytest.mark.django_db(transaction=True)
def test_an_edited_price_is_served_as_soon_as_the_edit_commits():
    # Given a product whose document is cached
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    assert _price(product.id) == 1000

    # When the price is edited (the service commits)
    services.sku_price_set(sku=sku, price=1234)

    # Then the very next read shows it
    assert _price(product.id) == 1234


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_edit_neither_evicts_nor_repopulates(django_assert_num_queries):
    # Given a cached product document
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    assert _price(product.id) == 1000
    key, groups = selectors.product_cache_key(product.id)
    cached_key = versioned_key(key, groups)
    assert cache.get(cached_key)["skus"][0]["price"] == 1000

    # When an edit is made, read back inside its transaction, then rolled back
    with pytest.raises(RuntimeError), transaction.atomic():
        services.sku_price_set(sku=sku, price=1)
        assert _price(product.id) == 1  # the transaction sees its own write (not cached)
        raise RuntimeError("operator cancelled")

    # Then the same cache entry is still there, untouched, and served without a query
    assert versioned_key(key, groups) == cached_key
    assert cache.get(cached_key)["skus"][0]["price"] == 1000
    with django_assert_num_queries(0):
        assert _price(product.id) == 1000


@pytest.mark.django_db(transaction=True)
def test_concurrent_readers_never_see_a_price_older_than_the_last_commit():
    # Given readers hammering a product while its price is raised step by step
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    commits: list[tuple[float, int]] = []  # (time the edit had committed, price)
    reads: list[tuple[float, int]] = []  # (time the read started, price seen)
    errors: list[BaseException] = []
    stop = threading.Event()
    lock = threading.Lock()

    def reader():
        try:
            while not stop.is_set():
                started = time.monotonic()
                price = _price(product.id)
                with lock:
                    reads.append((started, price))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for price in range(1001, 1041):
            with transaction.atomic():
                services.sku_price_set(sku=sku, price=price)
                time.sleep(0.01)  # a transaction that takes a moment to commit (admin inlines)
            commits.append((time.monotonic(), price))
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    # Then no read that started after a commit saw an older price
    assert errors == []
    assert len(reads) > 40
    stale = [
        (started, seen, committed)
        for started, seen in reads
        for done_at, committed in commits
        if done_at <= started and seen < committed
    ]
    assert stale == []
    assert _price(product.id) == 1040


@pytest.mark.django_db(transaction=True)
def test_deactivating_a_product_removes_it_from_detail_and_listings():
    product = product_with_skus()
    assert selectors.product_detail(product.id) is not None
    assert [p["id"] for p in selectors.product_page().items] == [product.id]

    services.products_set_active(product_ids=[product.id], active=False)

    assert selectors.product_detail(product.id) is None
    assert selectors.product_page().items == []
