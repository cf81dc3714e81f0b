"""Catalog reads. Every public read goes through the cache-aside helpers of ``shop.cache``.

Cached values are plain dicts (product documents) shared by the storefront and the API; the
availability of each SKU is merged in at read time from a short-lived cache, because stock
moves much faster than the catalog.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connections
from django.db.models import Prefetch, QuerySet

from apps.catalog.models import Category, Product, Sku
from apps.inventory.selectors import stock_available_many
from shop.cache import ProcessMemo, cache_fetch
from shop.errors import PageNotFound
from shop.pagecache import page_depends_on

logger = logging.getLogger(__name__)

# Cache groups. A product document depends on its product and on the category tree (name,
# breadcrumbs); listings depend on every product, so any catalog write bumps LISTING_GROUP.
CATEGORY_GROUP = "catalog:categories"
LISTING_GROUP = "catalog:listing"

SORTS = {"name": ("name", "id"), "popular": ("-hotness", "id"), "newest": ("-created_at", "-id")}
DEFAULT_SORT = "name"
MAX_QUERY_LENGTH = 100
# Ids are 64-bit; anything outside cannot exist, so it is answered without touching anything.
MAX_ID = 2**63 - 1
SKU_CODE_MAX_LENGTH = Sku._meta.get_field("code").max_length


def product_group(product_id: int) -> str:
    return f"product:{product_id}"


def product_cache_key(product_id: int) -> tuple[str, tuple[str, ...]]:
    """The cache key of a product document and the groups that version it."""
    return f"catalog:product:{product_id}", (product_group(product_id), CATEGORY_GROUP)


def listing_cache_key(
    category_id: int | None, sort: str, page: int, page_size: int
) -> tuple[str, tuple[str, ...]]:
    """The cache key of one listing page and the groups that version it."""
    key = f"catalog:listing:{category_id or 'all'}:{sort}:{page}:{page_size}"
    return key, (LISTING_GROUP, CATEGORY_GROUP)


# --- Categories ------------------------------------------------------------------------------


def category_tree_load() -> dict[str, Any]:
    """The category tree straight from the database (1 query)."""
    rows = list(
        Category.objects.order_by("position", "name").values(
            "id", "name", "slug", "parent_id", "is_active", "position", "description"
        )
    )
    nodes = {row["id"]: {**row, "children": []} for row in rows}
    roots = []
    for row in rows:
        parent = nodes.get(row["parent_id"]) if row["parent_id"] else None
        if parent is not None:
            parent["children"].append(row["id"])
        else:
            roots.append(row["id"])

    # A category is visible when it and all its ancestors are active.
    def mark(node_id: int, parent_visible: bool) -> None:
        node = nodes[node_id]
        node["visible"] = parent_visible and node["is_active"]
        for child_id in node["children"]:
            mark(child_id, node["visible"])

    for root_id in roots:
        mark(root_id, True)
    return {"nodes": nodes, "roots": roots}


CATEGORY_TREE_KEY = "catalog:category-tree"


def category_tree() -> dict[str, Any]:
    """``{"nodes": {id: node}, "roots": [id, ...]}``; each node has ``children`` ids."""
    tree = cache_fetch(
        CATEGORY_TREE_KEY,
        category_tree_load,
        ttl=settings.CATALOG_CACHE_TTL,
        groups=(CATEGORY_GROUP,),
        namespace="category_tree",
    )
    assert tree is not None  # the loader always returns a dict
    return tree


def category_get_by_slug(slug: str) -> dict[str, Any] | None:
    """A visible category by slug, or None."""
    for node in category_tree()["nodes"].values():
        if node["slug"] == slug and node["visible"]:
            return node
    return None


def category_descendant_ids(category_id: int) -> list[int]:
    """The category and every visible category below it."""
    nodes = category_tree()["nodes"]
    result, stack = [], [category_id]
    while stack:
        node = nodes.get(stack.pop())
        if node is None or not node["visible"]:
            continue
        result.append(node["id"])
        stack.extend(node["children"])
    return result


def category_breadcrumbs(category_id: int) -> list[dict[str, Any]]:
    nodes = category_tree()["nodes"]
    trail = []
    node = nodes.get(category_id)
    while node is not None:
        trail.append({"id": node["id"], "name": node["name"], "slug": node["slug"]})
        node = nodes.get(node["parent_id"]) if node["parent_id"] else None
    return list(reversed(trail))


def category_menu() -> list[dict[str, Any]]:
    """Visible root categories with their visible children, for navigation."""
    tree = category_tree()
    nodes = tree["nodes"]
    menu = []
    for root_id in tree["roots"]:
        root = nodes[root_id]
        if not root["visible"]:
            continue
        children = [nodes[c] for c in root["children"] if nodes[c]["visible"]]
        menu.append({**root, "children_nodes": children})
    return menu


def _visible_category_ids() -> list[int]:
    return [node["id"] for node in category_tree()["nodes"].values() if node["visible"]]


# The tree as this process keeps it for checkouts (shop.cache.ProcessMemo): every checkout asks
# which categories are visible, and the tree changes a few times a day. Only for checkouts: a
# cached listing or page built from a tree up to an interval old would be stored under the new
# version and outlive the interval.
_category_tree_memo = ProcessMemo(
    CATEGORY_TREE_KEY,
    category_tree_load,
    ttl=lambda: settings.CATALOG_CACHE_TTL,
    groups=(CATEGORY_GROUP,),
    namespace="category_tree",
)


def _checkout_visible_category_ids(category_ids: set[int]) -> set[int]:
    """The visible categories among the kept tree's; read again at once when one of
    ``category_ids`` is not in it at all (a category newer than the kept tree)."""
    tree = _category_tree_memo.get()
    if not category_ids <= {node["id"] for node in tree["nodes"].values()}:
        _category_tree_memo.forget()
        tree = _category_tree_memo.get()
    return {node["id"] for node in tree["nodes"].values() if node["visible"]}


# --- Product documents -----------------------------------------------------------------------


def _products_with_relations(queryset: QuerySet[Product]) -> QuerySet[Product]:
    return queryset.select_related("category").prefetch_related(
        Prefetch("skus", queryset=Sku.objects.filter(is_active=True).order_by("price", "code")),
        "images",
    )


def _product_document(product: Product, *, full: bool) -> dict[str, Any]:
    skus = [
        {
            "id": sku.id,
            "code": sku.code,
            "attributes": sku.attributes,
            "price": sku.price,
            "currency": sku.currency,
            "per_user_limit": sku.per_user_limit,
        }
        for sku in product.skus.all()
    ]
    images = [
        {"url": image.url, "alt": image.alt or product.name} for image in product.images.all()
    ]
    document = {
        "id": product.id,
        "name": product.name,
        "slug": product.slug,
        "hotness": product.hotness,
        "category": {
            "id": product.category.id,
            "name": product.category.name,
            "slug": product.category.slug,
        },
        "image": images[0] if images else None,
        "skus": skus,
        "price_min": min((sku["price"] for sku in skus), default=None),
        "price_max": max((sku["price"] for sku in skus), default=None),
        "currency": skus[0]["currency"] if skus else None,
    }
    if full:
        document["description"] = product.description
        document["images"] = images
        document["breadcrumbs"] = category_breadcrumbs(product.category_id)
    return document


def product_detail_load(product_id: int) -> dict[str, Any] | None:
    product = _products_with_relations(
        Product.objects.filter(
            id=product_id, is_active=True, category_id__in=_visible_category_ids()
        )
    ).first()
    return _product_document(product, full=True) if product is not None else None


def _with_availability(documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``documents`` with ``available`` per SKU and in total (one lookup for all).

    If the stock cannot be read (the database is down while the catalog comes from the cache)
    ``available`` is None: the page still renders and says availability is unknown.
    """
    sku_ids = [sku["id"] for document in documents for sku in document["skus"]]
    try:
        available: dict[int, int] | None = stock_available_many(sku_ids)
    except (OperationalError, InterfaceError) as exc:
        logger.warning("stock unavailable, showing the catalog without it: %s", exc)
        available = None
    # A shared page showing these figures is kept past PAGE_CACHE_TTL only while they hold.
    page_depends_on("stock", available if available is None else dict(available))
    result = []
    for document in documents:
        skus = [
            {**sku, "available": None if available is None else available.get(sku["id"], 0)}
            for sku in document["skus"]
        ]
        total = None if available is None else sum(sku["available"] for sku in skus)
        result.append({**document, "skus": skus, "available": total})
    return result


def product_detail(product_id: int, *, with_availability: bool = True) -> dict[str, Any] | None:
    """The product document for a visible product, or None. Cached, including "not found"."""
    if not 0 < product_id <= MAX_ID:
        return None
    key, groups = product_cache_key(product_id)
    document = cache_fetch(
        key,
        lambda: product_detail_load(product_id),
        ttl=settings.CATALOG_CACHE_TTL,
        groups=groups,
        namespace="product_detail",
    )
    if document is None or not with_availability:
        return document
    return _with_availability([document])[0]


def products_for_cache(product_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Fresh documents for ``product_ids`` straight from the database, in id order (preheat)."""
    queryset = Product.objects.filter(
        id__in=list(product_ids), is_active=True, category_id__in=_visible_category_ids()
    ).order_by("id")
    return [_product_document(p, full=True) for p in _products_with_relations(queryset)]


# --- Checkout ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkuForCheckout:
    id: int
    code: str
    product_id: int
    name: str
    price: int
    currency: str
    sellable: bool
    per_user_limit: int | None


def skus_for_checkout(codes: Iterable[str]) -> dict[str, SkuForCheckout]:
    """Current price and state of SKUs by code, read from the database (never the cache: an
    order snapshots the price the buyer pays). Unknown codes are simply absent. Which
    categories are visible comes from the tree this process keeps (a category hidden by
    another process is seen within PAGE_VERSION_CHECK_INTERVAL, by this one at once)."""
    # A code that cannot be a SKU's (too long, a NUL PostgreSQL refuses to compare, another
    # control character) is simply unknown: it never reaches the query.
    wanted = [
        code
        for code in codes
        if isinstance(code, str) and 0 < len(code) <= SKU_CODE_MAX_LENGTH and code.isprintable()
    ]
    if not wanted:
        return {}
    alias = Sku.objects.db
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(_skus_for_checkout_sql(alias, len(wanted)), wanted)
        rows = cursor.fetchall()
    attributes = _SKU_ATTRIBUTES
    visible = _checkout_visible_category_ids({row[10] for row in rows} - {None})
    found = {}
    for (sku_id, code, product_id, attrs, price, currency, active, per_user_limit,
         product_name, product_active, category_id) in rows:  # fmt: skip
        details = attributes.from_db_value(attrs, None, connection)
        found[code] = SkuForCheckout(
            id=sku_id,
            code=code,
            product_id=product_id,
            name=_display_name(product_name, details),
            price=price,
            currency=currency,
            sellable=bool(active and product_active) and category_id in visible,
            per_user_limit=per_user_limit,
        )
    return found


_SKU_ATTRIBUTES = Sku._meta.get_field("attributes")


@functools.lru_cache(maxsize=64)  # one per database and number of codes (<= ORDER_MAX_LINES)
def _skus_for_checkout_sql(alias: str, count: int) -> str:
    """The SKUs by code with their product's name, state and category: written by hand, as the
    hot path's one catalog read (the ORM spent more building it than PostgreSQL running it)."""
    quote = connections[alias].ops.quote_name

    def columns(model: type[Sku] | type[Product], alias: str, names: list[str]) -> list[str]:
        return [f"{alias}.{quote(model._meta.get_field(name).column)}" for name in names]

    selected = columns(Sku, "s", ["id", "code", "product", "attributes", "price", "currency",
                                  "is_active", "per_user_limit"])  # fmt: skip
    selected += columns(Product, "p", ["name", "is_active", "category"])
    product_fk = quote(Sku._meta.get_field("product").column)
    product_pk = quote(Product._meta.pk.column)
    code = quote(Sku._meta.get_field("code").column)
    # Identifiers come from the models' metadata, every code is a parameter.
    return (
        f"SELECT {', '.join(selected)} FROM {quote(Sku._meta.db_table)} s"  # noqa: S608  # nosec B608
        f" JOIN {quote(Product._meta.db_table)} p ON p.{product_pk} = s.{product_fk}"
        f" WHERE s.{code} IN ({', '.join(['%s'] * count)})"
    )


def _display_name(product_name: str, attributes: dict[str, Any] | None) -> str:
    details = ", ".join(f"{value}" for value in attributes.values()) if attributes else ""
    return f"{product_name} ({details})" if details else product_name


# --- Listings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductPage:
    items: list[dict[str, Any]]
    count: int
    page: int
    page_size: int

    @property
    def num_pages(self) -> int:
        return max(1, math.ceil(self.count / self.page_size))

    @property
    def has_next(self) -> bool:
        return self.page < self.num_pages

    @property
    def has_previous(self) -> bool:
        return self.page > 1


def listing_load(
    category_id: int | None, query: str, sort: str, page: int, page_size: int
) -> dict[str, Any]:
    """One listing page straight from the database: ``{"count", "items"}`` (4 queries; 1 for a
    page past the end, which has no items and is never sliced: its offset may not fit)."""
    visible = (
        category_descendant_ids(category_id) if category_id is not None else _visible_category_ids()
    )
    queryset = Product.objects.filter(is_active=True, category_id__in=visible)
    if query:
        queryset = queryset.filter(name__icontains=query)
    count = queryset.count()
    if page > _num_pages(count, page_size):
        return {"count": count, "items": []}
    offset = (page - 1) * page_size
    rows = _products_with_relations(queryset.order_by(*SORTS[sort]))[offset : offset + page_size]
    return {"count": count, "items": [_product_document(p, full=False) for p in rows]}


def _num_pages(count: int, page_size: int) -> int:
    return max(1, math.ceil(count / page_size))


def _search_text(query: str) -> str:
    """What a search looks for: printable characters only (a NUL cannot be sent to
    PostgreSQL, and no product name holds a control character), at most MAX_QUERY_LENGTH."""
    return "".join(ch for ch in query.strip()[:MAX_QUERY_LENGTH] if ch.isprintable())


def product_page(
    *,
    category_id: int | None = None,
    query: str = "",
    sort: str = DEFAULT_SORT,
    page: int = 1,
    page_size: int | None = None,
) -> ProductPage:
    """One page of visible products, optionally in a category subtree or matching ``query``.

    Browsing (no query) is cached; searches go to the database, because arbitrary search text
    would fill the cache with keys nobody reads twice. A page past the last one raises
    PageNotFound (page 1 always exists) and is never stored, so junk page numbers cost a count
    query each — no more than a search — and cannot grow the cache.
    """
    page_size = page_size or settings.CATALOG_PAGE_SIZE
    query = _search_text(query)
    sort = sort if sort in SORTS else DEFAULT_SORT
    page = max(1, page)

    def load() -> dict[str, Any]:
        data = listing_load(category_id, query, sort, page, page_size)
        if page > _num_pages(data["count"], page_size):
            raise PageNotFound()  # out of cache_fetch before anything is stored
        return data

    if query:
        data = load()
    else:
        key, groups = listing_cache_key(category_id, sort, page, page_size)
        data = cache_fetch(
            key, load, ttl=settings.CATALOG_CACHE_TTL, groups=groups, namespace="product_listing"
        )
        assert data is not None
    return ProductPage(
        items=_with_availability(data["items"]),
        count=data["count"],
        page=page,
        page_size=page_size,
    )


def products_hot(*, limit: int) -> list[dict[str, Any]]:
    """The hottest visible products, for the home page."""
    return product_page(sort="popular", page=1, page_size=limit).items


def product_ids_for_preheat(
    *,
    everything: bool = False,
    ids: Sequence[int] = (),
    category_ids: Sequence[int] = (),
    top: int | None = None,
) -> list[int]:
    """Which products a preheat should load, hottest first; the selections are combined."""
    visible = Product.objects.filter(is_active=True, category_id__in=_visible_category_ids())
    hottest = visible.order_by("-hotness", "id")
    chosen: dict[int, None] = dict.fromkeys(ids)
    if everything:
        chosen.update(dict.fromkeys(hottest.values_list("id", flat=True)))
    if category_ids:
        subtree = {
            cid for category_id in category_ids for cid in category_descendant_ids(category_id)
        }
        chosen.update(
            dict.fromkeys(hottest.filter(category_id__in=subtree).values_list("id", flat=True))
        )
    if top:
        chosen.update(dict.fromkeys(hottest[:top].values_list("id", flat=True)))
    return list(chosen)


def visible_category_ids() -> list[int]:
    return _visible_category_ids()


def sku_get_by_code(code: str) -> Sku | None:
    return Sku.objects.filter(code=code).first()
