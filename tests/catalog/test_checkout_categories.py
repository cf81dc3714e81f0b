"""The category tree a checkout reads (``skus_for_checkout``'s "is this SKU on sale") is kept in
the process (shop.cache.ProcessMemo): a category hidden here is seen at once, one hidden by
another process within PAGE_VERSION_CHECK_INTERVAL, and within it the tree costs no Redis."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from apps.catalog import selectors
from apps.catalog.models import Category
from apps.catalog.services import categories_changed
from shop.cache import version_key
from tests.factories.catalog import product_with_skus

pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _fresh_memo():
    selectors._category_tree_memo.forget()
    yield
    selectors._category_tree_memo.forget()


def _sellable(sku) -> bool:
    return selectors.skus_for_checkout([sku.code])[sku.code].sellable


def _hidden_by_another_process(category: Category) -> None:
    """What another process's edit leaves here: the row changed and the group's version
    bumped in Redis, without this process's bump listeners hearing of it."""
    Category.objects.filter(pk=category.pk).update(is_active=False)
    cache.incr(version_key(selectors.CATEGORY_GROUP))


def test_a_category_hidden_in_this_process_is_seen_by_the_next_checkout(
    settings, django_capture_on_commit_callbacks
):
    settings.PAGE_VERSION_CHECK_INTERVAL = 60
    sku = product_with_skus().skus.get()
    assert _sellable(sku)

    with django_capture_on_commit_callbacks(execute=True):  # the edit commits: groups bumped
        Category.objects.filter(pk=sku.product.category_id).update(is_active=False)
        categories_changed()

    assert not _sellable(sku)


def test_a_category_hidden_elsewhere_is_seen_once_the_interval_has_passed(settings):
    sku = product_with_skus().skus.get()
    settings.PAGE_VERSION_CHECK_INTERVAL = 60
    assert _sellable(sku)

    _hidden_by_another_process(sku.product.category)

    # within the interval the kept tree answers (the documented bound) ...
    assert _sellable(sku)
    # ... and once it has passed the versions are read again and the change is seen
    settings.PAGE_VERSION_CHECK_INTERVAL = 0
    assert not _sellable(sku)


def test_within_the_interval_the_tree_costs_no_redis_round_trip(settings, monkeypatch):
    settings.PAGE_VERSION_CHECK_INTERVAL = 60
    sku = product_with_skus().skus.get()
    assert _sellable(sku)
    calls: list[str] = []
    get_many, get = cache.get_many, cache.get
    monkeypatch.setattr(
        cache, "get_many", lambda *a, **k: calls.append("get_many") or get_many(*a, **k)
    )
    monkeypatch.setattr(cache, "get", lambda *a, **k: calls.append("get") or get(*a, **k))

    assert _sellable(sku)

    assert calls == []


def test_a_category_newer_than_the_kept_tree_is_read_at_once(settings):
    settings.PAGE_VERSION_CHECK_INTERVAL = 60
    first = product_with_skus().skus.get()
    assert _sellable(first)  # the tree is kept now

    # a product in a category created after that (factories do not bump the groups; clearing
    # the cache stands for the edit's invalidation reaching Redis)
    second = product_with_skus().skus.get()
    cache.clear()

    assert _sellable(second)
