"""Catalog writes. Each one invalidates the cache after its transaction commits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.catalog import selectors
from apps.catalog.exceptions import InvalidCatalogData
from apps.catalog.models import Product, Sku
from shop.cache import cache_put_many, invalidate_on_commit, versions_snapshot

PRODUCT_EDITABLE_FIELDS = {"name", "slug", "description", "category", "is_active", "hotness"}


def catalog_changed(*, product_ids: Iterable[int] = ()) -> None:
    """Products (their fields, SKUs, prices or images) changed in the current transaction:
    once it commits, their documents and every listing are invalidated."""
    groups = [selectors.product_group(pid) for pid in dict.fromkeys(product_ids)]
    invalidate_on_commit(*groups, selectors.LISTING_GROUP)


def categories_changed() -> None:
    """The category tree changed: every product document and listing depends on it."""
    invalidate_on_commit(selectors.CATEGORY_GROUP, selectors.LISTING_GROUP)


def _full_clean(instance: Product | Sku) -> None:
    try:
        instance.full_clean(validate_unique=True, validate_constraints=True)
    except ValidationError as exc:
        raise InvalidCatalogData(extra={"fields": exc.message_dict}) from exc


@transaction.atomic(using="default")
def product_update(*, product: Product, **changes: Any) -> Product:
    """Change a product's own fields; invalid values raise and write nothing."""
    unknown = set(changes) - PRODUCT_EDITABLE_FIELDS
    if unknown:
        raise InvalidCatalogData(f"Fields cannot be edited here: {', '.join(sorted(unknown))}.")
    for name, value in changes.items():
        setattr(product, name, value)
    _full_clean(product)
    product.save(update_fields=[*changes, "updated_at"])
    catalog_changed(product_ids=[product.id])
    return product


@transaction.atomic(using="default")
def sku_price_set(*, sku: Sku, price: int, currency: str | None = None) -> Sku:
    """Set a SKU's price (minor units). Negative, fractional or non-integer prices raise."""
    if not isinstance(price, int) or isinstance(price, bool) or price < 0:
        raise InvalidCatalogData(
            "Price must be a whole, non-negative number of minor units.", extra={"price": price}
        )
    sku.price = price
    update_fields = ["price"]
    if currency is not None:
        sku.currency = currency
        update_fields.append("currency")
    _full_clean(sku)
    sku.save(update_fields=update_fields)
    catalog_changed(product_ids=[sku.product_id])
    return sku


@transaction.atomic(using="default")
def products_set_active(*, product_ids: Sequence[int], active: bool) -> int:
    """Activate or deactivate products in bulk; returns how many rows changed."""
    changed = Product.objects.filter(id__in=product_ids).exclude(is_active=active)
    ids = list(changed.values_list("id", flat=True))
    count = Product.objects.filter(id__in=ids).update(is_active=active)
    catalog_changed(product_ids=ids)
    return count


@transaction.atomic(using="default")
def skus_set_active(*, sku_ids: Sequence[int], active: bool) -> int:
    """Activate or deactivate SKUs in bulk; returns how many rows changed."""
    changed = Sku.objects.filter(id__in=sku_ids).exclude(is_active=active)
    rows = list(changed.values_list("id", "product_id"))
    count = Sku.objects.filter(id__in=[sku_id for sku_id, _ in rows]).update(is_active=active)
    catalog_changed(product_ids=[product_id for _, product_id in rows])
    return count


# --- Preheat ---------------------------------------------------------------------------------


@dataclass
class PreheatResult:
    products: int = 0
    missing: list[int] = field(default_factory=list)
    listings: int = 0
    seconds: float = 0.0


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def catalog_preheat(
    *,
    product_ids: Sequence[int],
    listing_category_ids: Sequence[int | None] = (),
    ttl: int | None = None,
    batch_size: int = 200,
    on_progress: Callable[[int], None] | None = None,
) -> PreheatResult:
    """Load product documents (and the first listing pages of some categories, and the
    category tree) into the cache with a jittered ``ttl``. Idempotent: re-running rewrites
    the same keys with current data. Raises ``shop.cache.CacheUnavailable``."""
    started = time.monotonic()
    ttl = ttl or settings.PREHEAT_TTL
    result = PreheatResult()

    versions = versions_snapshot([selectors.CATEGORY_GROUP])
    cache_put_many(
        {
            selectors.CATEGORY_TREE_KEY: (
                (selectors.CATEGORY_GROUP,),
                selectors.category_tree_load(),
            )
        },
        ttl=ttl,
        versions=versions,
    )

    for batch in _chunks(list(product_ids), batch_size):
        keys = {pid: selectors.product_cache_key(pid) for pid in batch}
        versions = versions_snapshot(group for _, groups in keys.values() for group in groups)
        documents = selectors.products_for_cache(batch)
        found = {document["id"] for document in documents}
        result.missing.extend(pid for pid in batch if pid not in found)
        result.products += cache_put_many(
            {keys[d["id"]][0]: (keys[d["id"]][1], d) for d in documents}, ttl=ttl, versions=versions
        )
        if on_progress:
            on_progress(len(batch))

    # The home page's hot list, then the first pages of each requested listing.
    pages = [(None, "popular", 1, settings.HOME_HOT_PRODUCTS)]
    for category_id in dict.fromkeys(listing_category_ids):
        pages.extend(
            (category_id, selectors.DEFAULT_SORT, page, settings.CATALOG_PAGE_SIZE)
            for page in range(1, settings.PREHEAT_LISTING_PAGES + 1)
        )
    last_count: dict[int | None, int] = {}
    for category_id, sort, page, page_size in pages:
        if page > 1 and (page - 1) * page_size >= last_count.get(category_id, 0):
            continue  # past the last page of this listing
        key, groups = selectors.listing_cache_key(category_id, sort, page, page_size)
        versions = versions_snapshot(groups)
        data = selectors.listing_load(category_id, "", sort, page, page_size)
        last_count[category_id] = data["count"]
        result.listings += cache_put_many({key: (groups, data)}, ttl=ttl, versions=versions)
    result.seconds = time.monotonic() - started
    return result


@transaction.atomic(using="default")
def sku_per_user_limit_set(*, sku: Sku, per_user_limit: int | None) -> Sku:
    """Limit how many units of a SKU one buyer may hold (None: no limit)."""
    sku.per_user_limit = per_user_limit
    sku.save(update_fields=["per_user_limit"])
    catalog_changed(product_ids=[sku.product_id])
    return sku
