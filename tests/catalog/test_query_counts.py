"""Product list and detail cost a fixed number of queries whatever the page size."""

from __future__ import annotations

import pytest

from tests.factories.catalog import CategoryFactory, product_with_skus

# Cold cache: category tree, count, page, SKUs, images, stock.
LIST_COLD = 6
# Cold cache: category tree, product, SKUs, images, stock.
DETAIL_COLD = 5


@pytest.fixture
def catalog():
    category = CategoryFactory()
    return [
        product_with_skus(category=category, skus=1 + i % 3, images=1 + i % 2) for i in range(40)
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("page_size", [5, 30])
def test_api_product_list_queries_do_not_grow_with_the_page(
    client, catalog, page_size, django_assert_num_queries
):
    with django_assert_num_queries(LIST_COLD):
        response = client.get(f"/api/v1/products/?page_size={page_size}")
    assert len(response.json()["results"]) == page_size

    with django_assert_num_queries(0):  # warm: documents and availability come from the cache
        assert client.get(f"/api/v1/products/?page_size={page_size}").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("page", [1, 2])
def test_storefront_product_list_queries_are_fixed(
    client, catalog, page, django_assert_num_queries
):
    with django_assert_num_queries(LIST_COLD):
        response = client.get(f"/products/?page={page}")
    assert response.status_code == 200
    assert len(response.context["page"].items) == (24 if page == 1 else 16)


@pytest.mark.django_db
def test_search_is_not_cached_but_still_fixed(client, catalog, django_assert_num_queries):
    client.get("/api/v1/products/?q=Product&page_size=30")  # warms the tree and the stock
    for _ in range(2):  # the same search again queries again: searches are never cached
        with django_assert_num_queries(4):  # count, page, SKUs, images
            assert client.get("/api/v1/products/?q=Product&page_size=30").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(("skus", "images"), [(1, 1), (4, 3)])
def test_product_detail_queries_do_not_grow_with_skus_or_images(
    client, skus, images, django_assert_num_queries
):
    product = product_with_skus(skus=skus, images=images)
    with django_assert_num_queries(DETAIL_COLD):
        api = client.get(f"/api/v1/products/{product.id}/")
    assert len(api.json()["skus"]) == skus
    assert len(api.json()["images"]) == images

    # The page reuses the cached document; its "related products" listing is cold once
    # (count, page, SKUs, images; the only product's stock is cached), whatever its SKUs.
    with django_assert_num_queries(4):
        page = client.get(f"/products/{product.id}/{product.slug}/")
    assert page.status_code == 200
    with django_assert_num_queries(0):  # then the shared page itself
        assert client.get(f"/products/{product.id}/{product.slug}/")["X-Page-Cache"] == "hit"
