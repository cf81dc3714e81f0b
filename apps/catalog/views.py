from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from apps.catalog import selectors
from shop.errors import PageNotFound
from shop.parsing import ParseRefused, parse_page
from shop.runtime import switch_on

RELATED_COUNT = 4


def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "catalog/home.html",
        {
            "menu": selectors.category_menu(),
            "hot_products": selectors.products_hot(limit=settings.HOME_HOT_PRODUCTS),
        },
    )


def _page_number_or_404(request: HttpRequest) -> int:
    """``?page=`` of a storefront listing: absent means 1; anything that is not a page number
    (junk, 0, negative, past 64 bits) is the friendly 404, as is a page past the last one."""
    try:
        return parse_page(request.GET.get("page"))
    except ParseRefused as exc:
        raise Http404("No such page.") from exc


def product_list(request: HttpRequest) -> HttpResponse:
    slug = request.GET.get("category", "").strip()
    category = selectors.category_get_by_slug(slug) if slug else None
    if slug and category is None:
        raise Http404("No such category.")
    query = request.GET.get("q", "").strip()[: selectors.MAX_QUERY_LENGTH]
    sort = request.GET.get("sort", selectors.DEFAULT_SORT)
    sort = sort if sort in selectors.SORTS else selectors.DEFAULT_SORT
    try:
        page = selectors.product_page(
            category_id=category["id"] if category else None,
            query=query,
            sort=sort,
            page=_page_number_or_404(request),
        )
    except PageNotFound as exc:
        raise Http404("No such page.") from exc
    base_params = {k: v for k, v in (("category", slug), ("q", query), ("sort", sort)) if v}
    nodes = selectors.category_tree()["nodes"]
    subcategories = [
        nodes[child]
        for child in (category["children"] if category else [])
        if nodes[child]["visible"]
    ]
    return render(
        request,
        "catalog/product_list.html",
        {
            "page": page,
            "category": category,
            "breadcrumbs": selectors.category_breadcrumbs(category["id"]) if category else [],
            "subcategories": subcategories,
            "query": query,
            "sort": sort,
            "sorts": [("name", "Name"), ("popular", "Popular"), ("newest", "Newest")],
            "base_query": urlencode(base_params),
        },
    )


def product_detail(request: HttpRequest, product_id: int, slug: str = "") -> HttpResponse:
    product = selectors.product_detail(product_id)
    if product is None:
        raise Http404("No such product.")
    if slug != product["slug"]:
        return redirect(
            reverse("product-detail", kwargs={"product_id": product_id, "slug": product["slug"]}),
            permanent=True,
        )
    return render(
        request,
        "catalog/product_detail.html",
        {"product": product, "related": _related(product) if not switch_on("widgets_off") else []},
    )


def _related(product: dict) -> list[dict]:
    """A few popular products of the same category (a non-core widget: "widgets_off" hides it)."""
    page = selectors.product_page(
        category_id=product["category"]["id"], sort="popular", page_size=RELATED_COUNT + 1
    )
    return [p for p in page.items if p["id"] != product["id"]][:RELATED_COUNT]
