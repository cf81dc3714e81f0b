"""Operators edit the catalog in the admin; shoppers see the change at once."""

from __future__ import annotations

import pytest

from apps.catalog import selectors
from apps.catalog.models import Product, Sku
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory


@pytest.fixture
def operator_client(client):
    client.force_login(UserFactory(username="op", is_staff=True, is_superuser=True))
    return client


def _inline_management(prefix: str, total: int, initial: int) -> dict[str, str]:
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


@pytest.mark.django_db
def test_editing_a_price_inline_is_visible_to_shoppers_at_once(
    operator_client, django_capture_on_commit_callbacks
):
    # Given a product whose document is cached
    product = product_with_skus(images=0)
    sku = Sku.objects.get(product=product)
    assert selectors.product_detail(product.id)["skus"][0]["price"] == 1000

    # When an operator changes the SKU's price in the product's admin page
    data = {
        "category": product.category_id,
        "name": product.name,
        "slug": product.slug,
        "description": product.description,
        "is_active": "on",
        "hotness": product.hotness,
        **_inline_management("skus", 1, 1),
        "skus-0-id": sku.id,
        "skus-0-product": product.id,
        "skus-0-code": sku.code,
        "skus-0-attributes": '{"size": "M"}',
        "skus-0-price": "2599",
        "skus-0-currency": "EUR",
        "skus-0-is_active": "on",
        **_inline_management("images", 0, 0),
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(f"/admin/catalog/product/{product.id}/change/", data)

    # Then the shop shows the new price immediately
    assert response.status_code == 302, response.content.decode()[:2000]
    assert selectors.product_detail(product.id)["skus"][0]["price"] == 2599


@pytest.mark.django_db
def test_bulk_deactivate_hides_products_from_the_shop(
    operator_client, django_capture_on_commit_callbacks
):
    products = [product_with_skus() for _ in range(3)]
    assert selectors.product_page().count == 3
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            "/admin/catalog/product/",
            {"action": "deactivate", "_selected_action": [p.id for p in products[:2]]},
        )
    assert response.status_code == 302
    assert Product.objects.filter(is_active=False).count() == 2
    assert [p["id"] for p in selectors.product_page().items] == [products[2].id]
    assert selectors.product_detail(products[0].id) is None


@pytest.mark.django_db
def test_admin_pages_render_with_search_and_filters(operator_client):
    product = product_with_skus()
    sku = product.skus.get()
    for url in [
        "/admin/catalog/product/",
        f"/admin/catalog/product/?q={sku.code}",
        f"/admin/catalog/product/?in_category={product.category_id}&is_active__exact=1",
        f"/admin/catalog/product/{product.id}/change/",
        "/admin/catalog/sku/?is_active__exact=1",
        "/admin/catalog/category/",
        "/admin/inventory/stock/",
    ]:
        response = operator_client.get(url)
        assert response.status_code == 200, url
    found = operator_client.get(f"/admin/catalog/product/?q={sku.code}")
    assert product.name in found.content.decode()


@pytest.mark.django_db
def test_receiving_stock_in_the_admin_keeps_the_sum(operator_client):
    product = product_with_skus(stock=5)
    sku = product.skus.get()
    response = operator_client.post(f"/admin/inventory/stock/{sku.id}/change/", {"receive": "7"})
    assert response.status_code == 302
    from apps.inventory.models import Stock

    stock = Stock.objects.get(sku=sku)
    assert (stock.received, stock.available) == (12, 12)


@pytest.mark.django_db
def test_non_staff_cannot_use_the_admin(client):
    client.force_login(UserFactory(username="buyer"))
    response = client.get("/admin/catalog/product/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


@pytest.mark.django_db
def test_bulk_deactivating_skus_removes_them_from_the_product(
    operator_client, django_capture_on_commit_callbacks
):
    product = product_with_skus(skus=3)
    first = product.skus.order_by("price").first()
    assert len(selectors.product_detail(product.id)["skus"]) == 3
    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(
            "/admin/catalog/sku/", {"action": "deactivate", "_selected_action": [first.id]}
        )
    assert response.status_code == 302
    codes = [sku["code"] for sku in selectors.product_detail(product.id)["skus"]]
    assert first.code not in codes
    assert len(codes) == 2
