from __future__ import annotations

import pytest

from tests.factories.catalog import CategoryFactory, product_with_skus


@pytest.fixture
def shop():
    root = CategoryFactory(name="Home & Kitchen", slug="home-kitchen")
    lamps = CategoryFactory(name="Lighting", slug="lighting", parent=root)
    products = [
        product_with_skus(category=lamps, name=f"Desk Lamp {i:02d}", slug=f"desk-lamp-{i:02d}")
        for i in range(30)
    ]
    sold_out = product_with_skus(category=lamps, name="Floor Lamp", slug="floor-lamp", stock=0)
    return {"root": root, "lamps": lamps, "products": products, "sold_out": sold_out}


@pytest.mark.django_db
def test_home_shows_categories_and_hot_products(client, shop):
    page = client.get("/").content.decode()
    assert "Home &amp; Kitchen" in page
    assert "Lighting" in page
    hottest = max(shop["products"], key=lambda p: p.hotness)
    assert hottest.name in page


@pytest.mark.django_db
def test_list_filters_by_category_searches_and_paginates(client, shop):
    first = client.get("/products/?category=home-kitchen")
    assert first.status_code == 200
    assert first.context["page"].count == 31
    assert first.context["page"].num_pages == 2
    assert "page=2" in first.content.decode()

    second = client.get("/products/?category=home-kitchen&page=2")
    assert len(second.context["page"].items) == 7

    found = client.get("/products/?q=floor")
    assert [p["name"] for p in found.context["page"].items] == ["Floor Lamp"]
    assert "Sold out" in found.content.decode()


@pytest.mark.django_db
def test_bad_list_input_is_a_friendly_answer(client, shop):
    assert client.get("/products/?category=nope").status_code == 404
    assert client.get("/products/?page=99").status_code == 404
    # a page that is not a page number is not a page of the listing either (docs/input-limits.md)
    assert client.get("/products/?page=abc").status_code == 404
    assert client.get("/products/?sort=bogus").status_code == 200


@pytest.mark.django_db
def test_product_page_shows_skus_prices_and_availability(client, shop):
    product = shop["products"][0]
    response = client.get(f"/products/{product.id}/{product.slug}/")
    page = response.content.decode()
    assert response.status_code == 200
    assert product.name in page
    assert product.skus.get().code in page
    assert "€10.00" in page
    assert "In stock" in page


@pytest.mark.django_db
def test_product_urls_redirect_to_the_canonical_slug(client, shop):
    product = shop["products"][0]
    response = client.get(f"/products/{product.id}/")
    assert response.status_code == 301
    assert response["Location"] == f"/products/{product.id}/{product.slug}/"
    assert client.get(f"/products/{product.id}/wrong-slug/").status_code == 301


@pytest.mark.django_db
def test_missing_product_is_a_404_page(client, shop):
    response = client.get("/products/999999/")
    assert response.status_code == 404
    assert "text/html" in response["Content-Type"]
