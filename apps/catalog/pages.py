"""Which catalog responses anonymous readers share through ``shop.pagecache``.

Every catalog write bumps LISTING_GROUP (and category writes CATEGORY_GROUP too); those are
the PAGE_CACHE_GROUPS, so any edit retires every shared page at once. Pages also show stock,
so they are fresh for PAGE_CACHE_TTL seconds; past that a page is kept (up to
PAGE_CACHE_MAX_AGE) only if the stock figures it showed are still the current ones.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest

from apps.catalog.selectors import SORTS
from apps.inventory.selectors import stock_available_snapshot
from shop.pagecache import cacheable_page, page_dependency_register
from shop.parsing import is_canonical_int

# What each listing reads; any other parameter (a search, junk) is not shared.
STOREFRONT_LISTING_PARAMS = {"category", "sort", "page"}
API_LISTING_PARAMS = {"category", "sort", "page", "page_size"}


def _plain_browsing(allowed: set[str]) -> Callable[[HttpRequest], bool]:
    """Searches and unknown parameters are not shared: they would fill the cache with pages
    nobody asks for twice. Nor are numbers spelt more than one way (``page=01``): every shared
    page is one of a bounded set — a page that does not exist is a 404, which is never stored.
    """

    def accept(request: HttpRequest) -> bool:
        params = request.GET
        return (
            not set(params) - allowed
            and all(len(params.getlist(name)) == 1 for name in params)
            and params.get("sort", "name") in SORTS
            and all(
                is_canonical_int(params[name]) for name in ("page", "page_size") if name in params
            )
        )

    return accept


def _no_parameters(request: HttpRequest) -> bool:
    """Home and product pages read no parameter: ``?x=1``, ``?x=2``... are the same page, and
    sharing each would let anyone grow the cache without bound."""
    return not request.GET


shared_page = cacheable_page(_no_parameters)
shared_listing = cacheable_page(_plain_browsing(STOREFRONT_LISTING_PARAMS))
shared_api_listing = cacheable_page(_plain_browsing(API_LISTING_PARAMS))


def _stock_unchanged(shown: dict[int, int]) -> bool:
    """Whether every SKU a page showed still has the units it showed, by this process's stock
    snapshot (no round trip but one query per AVAILABILITY_CACHE_TTL for all of them)."""
    return stock_available_snapshot(list(shown)) == shown


def page_dependencies_register() -> None:
    """Called once at start-up (CatalogConfig.ready)."""
    page_dependency_register("stock", _stock_unchanged)
