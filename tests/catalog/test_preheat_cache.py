from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from apps.catalog import selectors
from tests.factories.catalog import CategoryFactory, product_with_skus
from tests.shop.test_cache_redis_down import DEAD_REDIS


@pytest.fixture
def products():
    phones = CategoryFactory(slug="phones")
    lamps = CategoryFactory(slug="lamps")
    return {
        "phones": [product_with_skus(category=phones, hotness=100 + i) for i in range(3)],
        "lamps": [product_with_skus(category=lamps, hotness=i) for i in range(3)],
    }


def _served_from_cache(product_ids, django_assert_num_queries) -> bool:
    with django_assert_num_queries(0):
        return all(
            selectors.product_detail(pid, with_availability=False) is not None
            for pid in product_ids
        )


@pytest.mark.django_db
def test_preheat_all_serves_every_product_without_a_query(
    products, django_assert_num_queries, capsys
):
    call_command("preheat_cache", "--all", "--no-progress")
    ids = [p.id for group in products.values() for p in group]
    assert _served_from_cache(ids, django_assert_num_queries)
    with django_assert_num_queries(1):  # the listing itself is warm; only stock is read
        assert selectors.product_page().count == 6
    out = capsys.readouterr().out
    assert "Preheated 6 products" in out


@pytest.mark.django_db
def test_preheat_by_ids_category_and_top(products, django_assert_num_queries, capsys):
    phones, lamps = products["phones"], products["lamps"]

    call_command("preheat_cache", "--category", "lamps", "--no-progress")
    assert _served_from_cache([p.id for p in lamps], django_assert_num_queries)

    call_command("preheat_cache", "--top", "2", "--ids", f"{lamps[0].id},424242", "--ttl", "90m")
    hottest_two = sorted(phones, key=lambda p: -p.hotness)[:2]
    assert _served_from_cache([p.id for p in hottest_two], django_assert_num_queries)
    out = capsys.readouterr().out
    assert "Skipped (missing or not visible): 424242" in out
    assert "TTL 5400 s" in out


@pytest.mark.django_db
def test_preheat_is_idempotent(products, capsys):
    call_command("preheat_cache", "--all")
    first = capsys.readouterr().out
    call_command("preheat_cache", "--all")
    second = capsys.readouterr().out
    assert first.split(" in ")[0] == second.split(" in ")[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args",
    [[], ["--top", "0"], ["--ids", "a,b"], ["--ttl", "soon", "--all"], ["--category", "nope"]],
)
def test_bad_arguments_are_clear_errors(products, args):
    with pytest.raises(CommandError):
        call_command("preheat_cache", *args)


@pytest.mark.django_db
def test_an_unreachable_cache_is_an_error_not_a_traceback(products, settings):
    settings.CACHES = DEAD_REDIS
    with pytest.raises(CommandError, match="cache is unreachable"):
        call_command("preheat_cache", "--ids", str(products["lamps"][0].id))
