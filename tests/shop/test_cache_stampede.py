"""Stampede protection: concurrent misses on one key cause one database load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from apps.catalog import selectors
from tests.factories.catalog import product_with_skus

READERS = 50


class QueryCounter:
    """Counts, across threads, the SQL statements that read a table."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        if f'"{self.table}"' in sql and sql.lstrip().upper().startswith("SELECT"):
            with self._lock:
                self.count += 1
        return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_fifty_concurrent_readers_of_a_cold_key_cause_one_load(monkeypatch):
    # Given a product that is not in the cache, and a loader slow enough to let readers pile up
    product = product_with_skus(skus=2, images=2)
    loads = []
    original = selectors.product_detail_load

    def slow_load(product_id):
        loads.append(product_id)
        time.sleep(0.2)
        return original(product_id)

    monkeypatch.setattr(selectors, "product_detail_load", slow_load)
    product_queries = QueryCounter("catalog_product")
    barrier = threading.Barrier(READERS)

    def reader(_):
        try:
            with connection.execute_wrapper(product_queries):
                barrier.wait()
                return selectors.product_detail(product.id, with_availability=False)
        finally:
            connections.close_all()

    # When 50 threads read it at the same moment
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        results = list(pool.map(reader, range(READERS)))

    # Then the database was loaded exactly once and everyone got the same document
    assert loads == [product.id]
    assert product_queries.count == 1
    assert all(result == results[0] for result in results)
    assert results[0]["id"] == product.id
    assert len(results[0]["skus"]) == 2


@pytest.mark.django_db(transaction=True)
def test_readers_load_themselves_when_the_loader_holds_the_lock_too_long(settings, monkeypatch):
    # Given a loader far slower than readers are willing to wait
    settings.CACHE_LOCK_WAIT = 0.1
    product = product_with_skus()
    original = selectors.product_detail_load
    calls = []

    def very_slow(product_id):
        calls.append(product_id)
        if len(calls) == 1:
            time.sleep(0.6)
        return original(product_id)

    monkeypatch.setattr(selectors, "product_detail_load", very_slow)

    def reader(_):
        try:
            return selectors.product_detail(product.id, with_availability=False)
        finally:
            connections.close_all()

    # When a few readers arrive while the first loader is stuck
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(reader, range(4)))

    # Then they are answered (from the database) rather than failing or waiting forever
    assert all(result["id"] == product.id for result in results)
    assert len(calls) >= 2
