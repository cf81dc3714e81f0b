"""Which catalog responses anonymous readers share through ``shop.pagecache``.

Every catalog write bumps LISTING_GROUP (and category writes CATEGORY_GROUP too); those are
the PAGE_CACHE_GROUPS, so any edit retires every shared page at once. Pages also show stock,
so they live PAGE_CACHE_TTL seconds at most.
"""

from __future__ import annotations

from django.http import HttpRequest

from apps.catalog.selectors import SORTS
from shop.pagecache import cacheable_page

LISTING_PARAMS = {"category", "sort", "page", "page_size"}


def _plain_browsing(request: HttpRequest) -> bool:
    """Searches and unknown parameters are not shared: they would fill the cache with pages
    nobody asks for twice."""
    params = request.GET
    return (
        not set(params) - LISTING_PARAMS
        and params.get("sort", "name") in SORTS
        and all(params.get(name, "1").isdigit() for name in ("page", "page_size"))
    )


shared_page = cacheable_page()
shared_listing = cacheable_page(_plain_browsing)
