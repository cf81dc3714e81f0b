"""The page cache's in-process L1: bounded, thread-safe, checked against the catalog versions
(a committed edit is never served stale beyond PAGE_VERSION_CHECK_INTERVAL <= PAGE_CACHE_TTL),
revalidated against the stock it showed, and out of the way when Redis is down."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from redis.connection import AbstractConnection

from apps.catalog import services
from apps.catalog.models import Sku
from apps.inventory.services import stock_receive
from shop import pagecache
from shop.pagecache import PageL1, page_l1
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.shop.resilience_helpers import DEAD_REDIS
from tests.workers import wait_for


def _url(product) -> str:
    return f"/products/{product.id}/{product.slug}/"


def _entry(size: int, tag: str = "") -> dict:
    return {"content": (tag.encode() or b"x") * size, "headers": {}}


class RedisRoundTrips:
    """Counts the commands (or pipelines) sent to Redis: one send, one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = AbstractConnection.send_packed_command

        def counted(conn, command, *args, **kwargs):
            self.count += 1
            return original(conn, command, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


# --- bounds and threads -------------------------------------------------------------------------


def test_l1_keeps_at_most_max_entries_dropping_the_least_recently_used(settings):
    settings.PAGE_L1_MAX_ENTRIES = 3
    l1 = PageL1()
    for key in "abc":
        l1.put(key, _entry(10))
    assert l1.get("a") is not None  # a is now the most recently used
    l1.put("d", _entry(10))

    assert l1.get("b") is None
    assert all(l1.get(key) is not None for key in "acd")
    assert l1.stats()[0] == 3


def test_l1_keeps_at_most_max_bytes_and_refuses_a_page_larger_than_the_bound(settings):
    size = 10_000
    settings.PAGE_L1_MAX_BYTES = 3 * (size + pagecache._ENTRY_OVERHEAD)
    l1 = PageL1()
    for key in "abcd":
        l1.put(key, _entry(size))

    assert l1.get("a") is None
    assert l1.stats() == (3, settings.PAGE_L1_MAX_BYTES)

    l1.put("huge", _entry(settings.PAGE_L1_MAX_BYTES))
    assert l1.get("huge") is None
    assert l1.stats() == (3, settings.PAGE_L1_MAX_BYTES)  # nothing evicted for it either


def test_l1_stays_consistent_under_threads_hammering_get_and_put(settings):
    settings.PAGE_L1_MAX_ENTRIES = 50
    settings.PAGE_L1_MAX_BYTES = 40 * (100 + pagecache._ENTRY_OVERHEAD)
    l1 = PageL1()
    keys = [f"k{i}" for i in range(200)]
    wrong: list[tuple[str, bytes]] = []
    start = threading.Barrier(8)

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        start.wait()
        for _ in range(3000):
            key = rng.choice(keys)
            if rng.random() < 0.5:
                l1.put(key, {"content": key.encode() + b"." * rng.randint(1, 96), "h": {}})
            elif rng.random() < 0.1:
                l1.discard(key)
            elif (entry := l1.get(key)) is not None and not entry["content"].startswith(
                key.encode() + b"."
            ):
                wrong.append((key, entry["content"]))

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Every read returned the page stored under its own key, and the accounting adds up.
    assert wrong == []
    entries, used = l1.stats()
    stored = [l1.get(key) for key in keys]
    kept = [entry for entry in stored if entry is not None]
    assert entries == len(kept) <= settings.PAGE_L1_MAX_ENTRIES
    assert used == sum(pagecache._entry_size(entry) for entry in kept)
    assert used <= settings.PAGE_L1_MAX_BYTES


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_threads_reading_rotating_pages_each_get_their_own_page(settings):
    settings.PAGE_L1_MAX_ENTRIES = 4  # fewer than the pages: evictions under concurrency
    products = [product_with_skus(name=f"Threaded product {i}") for i in range(6)]
    wrong: list[str] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def reader(offset: int) -> None:
        client = Client()
        try:
            for i in range(30):
                product = products[(offset + i) % len(products)]
                response = client.get(_url(product))
                with lock:
                    statuses[f"{response.status_code} {response.get('X-Page-Cache')}"] += 1
                    if product.name not in response.content.decode():
                        wrong.append(product.name)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert wrong == []
    assert set(statuses) <= {"200 hit", "200 miss", "200 revalidated"}
    assert statuses["200 hit"] > 0
    call_command("audit_invariants")


# --- work budget ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_cached_anonymous_product_page_costs_no_sql_and_no_redis_round_trip(client, monkeypatch):
    product = product_with_skus()
    first = client.get(_url(product))
    assert first["X-Page-Cache"] == "miss"
    client.get(_url(product))  # the version snapshot is now fresh
    redis = RedisRoundTrips(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        pages = [client.get(_url(product)) for _ in range(5)]

    assert [page["X-Page-Cache"] for page in pages] == ["hit"] * 5
    assert all(page.content == first.content for page in pages)
    assert len(queries) == 0
    assert redis.count == 0


@pytest.mark.needs_redis  # the round trip it counts is to Redis (the embedded cache has none)
@pytest.mark.django_db
def test_another_processs_page_costs_one_redis_round_trip_and_no_sql(client, monkeypatch):
    product = product_with_skus()
    client.get(_url(product))
    pagecache.page_cache_local_reset()  # as a process that never built this page
    redis = RedisRoundTrips(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        page = client.get(_url(product))

    assert page["X-Page-Cache"] == "hit"
    assert (len(queries), redis.count) == (0, 1)
    assert page_l1.stats()[0] == 1  # copied into L1


@pytest.mark.django_db
def test_a_page_past_its_fresh_spell_is_revalidated_without_sql_or_redis(client, monkeypatch):
    product = product_with_skus()
    url = _url(product)
    client.get(url)
    client.get(url)  # a hit: the version snapshot is fresh
    key = pagecache.page_key(RequestFactory().get(url))
    expire = {**page_l1.get(key), "fresh_until": 0.0}
    page_l1.put(key, expire)
    assert client.get(url)["X-Page-Cache"] == "revalidated"  # loads the stock snapshot
    page_l1.put(key, expire)
    redis = RedisRoundTrips(monkeypatch)

    with CaptureQueriesContext(connection) as queries:
        page = client.get(url)

    assert page["X-Page-Cache"] == "revalidated"
    assert (len(queries), redis.count) == (0, 0)


@pytest.mark.django_db
def test_a_page_is_not_kept_past_its_fresh_spell_once_a_switch_it_honoured_flipped(client):
    from shop.models import Switch
    from shop.runtime import runtime_refresh

    product = product_with_skus()
    url = _url(product)
    client.get(url)
    key = pagecache.page_key(RequestFactory().get(url))
    # The switch flips as this process sees it, the page groups untouched (the bump of the
    # process that flipped it reached Redis before this process's page was stored)
    Switch.objects.update_or_create(name="read_only", defaults={"on": True})
    runtime_refresh()
    expired = {**page_l1.get(key), "fresh_until": 0.0}  # past its fresh spell, in both levels
    page_l1.put(key, expired)
    cache.set(key, expired)

    page = client.get(url)

    assert page["X-Page-Cache"] == "miss"
    assert "browse-only mode" in page.content.decode()


# --- staleness ------------------------------------------------------------------------------------


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_an_edit_from_another_process_is_served_within_the_version_check_interval(client, settings):
    settings.PAGE_VERSION_CHECK_INTERVAL = 0.5
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    client.get(_url(product))
    assert client.get(_url(product))["X-Page-Cache"] == "hit"
    before = pagecache._versions.current()

    services.sku_price_set(sku=sku, price=4321)
    # This process now looks like one that did not make the edit: it still holds the versions
    # it read just before it.
    pagecache._versions.remember(before)

    # The edit is on the page within the interval (polling; PAGE_CACHE_TTL is the rule's bound).
    seen: list[str] = []

    def fresh() -> bool:
        page = client.get(_url(product))
        seen.append(page["X-Page-Cache"])
        return "€43.21" in page.content.decode()

    wait_for(fresh, timeout=settings.PAGE_CACHE_TTL, every=0.05)
    assert seen[-1] == "miss"  # built again, not a stale copy
    # And deterministically: a snapshot as old as the interval is never trusted.
    pagecache._versions.remember(before, read_at=time.monotonic() - 0.5)
    page = client.get(_url(product))
    assert "€43.21" in page.content.decode()


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_page_past_its_fresh_spell_is_kept_only_while_its_stock_holds(client, settings):
    settings.PAGE_CACHE_TTL = 0.2
    settings.AVAILABILITY_CACHE_TTL = 1
    product = product_with_skus(stock=10)
    sku = Sku.objects.get(product=product)
    first = client.get(_url(product))
    assert "In stock (10)" in first.content.decode()

    # Past PAGE_CACHE_TTL, unchanged stock: the same page, revalidated rather than rebuilt
    wait_for(lambda: client.get(_url(product))["X-Page-Cache"] == "revalidated", every=0.05)
    assert client.get(_url(product)).content == first.content

    # A unit is received: once the stock figure is re-read the page is built again
    stock_receive(sku_id=sku.id, quantity=1)
    wait_for(lambda: "In stock (11)" in client.get(_url(product)).content.decode(), every=0.05)
    call_command("audit_invariants")


@pytest.mark.django_db
def test_a_page_is_rebuilt_past_its_max_age_even_if_its_stock_holds(client, settings):
    settings.PAGE_CACHE_TTL = 0.1
    settings.PAGE_CACHE_MAX_AGE = 0
    product = product_with_skus()
    client.get(_url(product))
    wait_for(lambda: client.get(_url(product))["X-Page-Cache"] == "miss", every=0.05)
    assert "revalidated" not in {client.get(_url(product))["X-Page-Cache"] for _ in range(3)}


# --- Redis down, logged-in buyers ---------------------------------------------------------------


@pytest.mark.django_db
def test_redis_down_pages_still_answer_and_an_unverifiable_l1_copy_is_not_served(
    client, settings, django_capture_on_commit_callbacks
):
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    client.get(_url(product))
    assert client.get(_url(product))["X-Page-Cache"] == "hit"

    settings.CACHES = DEAD_REDIS
    pagecache._versions.forget()  # the interval has passed: the versions must be read again
    with django_capture_on_commit_callbacks(execute=True):
        services.sku_price_set(sku=sku, price=4321)  # invalidation deferred: Redis is down

    pages = [client.get(_url(product)) for _ in range(3)]
    assert [page.status_code for page in pages] == [200] * 3
    assert all("X-Page-Cache" not in page for page in pages)  # straight to the view
    assert all("€43.21" in page.content.decode() for page in pages)


@pytest.mark.django_db
def test_logged_in_buyers_get_their_own_page_even_with_the_anonymous_one_in_l1(client):
    product = product_with_skus()
    client.get(_url(product))
    assert client.get(_url(product))["X-Page-Cache"] == "hit"
    names = ("buyer_ivy_5821", "buyer_jack_7730")
    pages = {}
    for name in names:
        buyer = Client()
        buyer.force_login(UserFactory(username=name))
        page = buyer.get(_url(product))
        assert "X-Page-Cache" not in page
        pages[name] = page.content.decode()

    assert names[0] in pages[names[0]] and names[1] not in pages[names[0]]
    assert names[1] in pages[names[1]] and names[0] not in pages[names[1]]
    assert page_l1.stats()[0] == 1  # only the anonymous page is kept


@pytest.mark.django_db
def test_the_stock_snapshot_stays_within_its_bound_and_answers_right(settings):
    from apps.inventory.selectors import _snapshot, stock_available_snapshot

    settings.STOCK_SNAPSHOT_MAX_SKUS = 2
    skus = [Sku.objects.get(product=product_with_skus(stock=n)).id for n in (3, 4, 5)]

    assert stock_available_snapshot(skus[:2]) == {skus[0]: 3, skus[1]: 4}
    assert stock_available_snapshot(skus[1:]) == {skus[1]: 4, skus[2]: 5}
    assert stock_available_snapshot([skus[0]]) == {skus[0]: 3}
    assert len(_snapshot._values) <= 2
