from __future__ import annotations

import pytest

from apps.catalog.models import Category
from tests.factories.catalog import CategoryFactory, product_with_skus


@pytest.fixture
def tree():
    """electronics ⊃ phones; plus an inactive 'hidden' category."""
    electronics = CategoryFactory(name="Electronics", slug="electronics")
    phones = CategoryFactory(name="Phones", slug="phones", parent=electronics)
    hidden = CategoryFactory(name="Hidden", slug="hidden", is_active=False)
    return {
        "electronics": electronics,
        "phones": phones,
        "hidden": hidden,
        "phone": product_with_skus(
            category=phones, name="Aurora Phone", slug="aurora-phone", skus=2
        ),
        "tv": product_with_skus(category=electronics, name="Nimbus TV", slug="nimbus-tv"),
        "secret": product_with_skus(category=hidden, name="Secret", slug="secret"),
    }


@pytest.mark.django_db
def test_product_shape_matches_the_contract(client, tree):
    body = client.get(f"/api/v1/products/{tree['phone'].id}/").json()
    assert body["id"] == tree["phone"].id
    assert body["name"] == "Aurora Phone"
    assert body["category"] == {"id": tree["phones"].id, "name": "Phones", "slug": "phones"}
    assert [c["slug"] for c in body["breadcrumbs"]] == ["electronics", "phones"]
    assert body["skus"][0].keys() >= {"code", "price", "currency", "available"}
    assert [s["price"] for s in body["skus"]] == [1000, 1100]
    assert body["available"] == 20


@pytest.mark.django_db
def test_list_is_paginated_in_the_contract_shape(client, tree):
    body = client.get("/api/v1/products/?page_size=1").json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 2  # the product in the inactive category is not listed
    assert body["previous"] is None
    assert "page=2" in body["next"]
    second = client.get(body["next"]).json()
    assert second["next"] is None
    assert second["previous"] is not None
    names = {body["results"][0]["name"], second["results"][0]["name"]}
    assert names == {"Aurora Phone", "Nimbus TV"}


@pytest.mark.django_db
def test_category_filter_covers_the_subtree_by_slug_or_id(client, tree):
    by_slug = client.get("/api/v1/products/?category=electronics").json()
    by_id = client.get(f"/api/v1/products/?category={tree['electronics'].id}").json()
    only_phones = client.get("/api/v1/products/?category=phones").json()
    assert by_slug["count"] == by_id["count"] == 2
    assert [p["name"] for p in only_phones["results"]] == ["Aurora Phone"]


@pytest.mark.django_db
def test_search_and_sort(client, tree):
    assert [p["name"] for p in client.get("/api/v1/products/?q=nimbus").json()["results"]] == [
        "Nimbus TV"
    ]
    popular = client.get("/api/v1/products/?sort=popular").json()["results"]
    assert popular[0]["id"] == max(tree["phone"], tree["tv"], key=lambda p: p.hotness).id


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    ["page=0", "page=abc", "page_size=1000", "sort=price", "page_size=-1"],
)
def test_bad_list_parameters_are_validation_errors(client, tree, query):
    response = client.get(f"/api/v1/products/?{query}")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


@pytest.mark.django_db
def test_unknown_or_hidden_things_are_404_in_the_error_format(client, tree):
    for url in [
        "/api/v1/products/?category=nope",
        "/api/v1/products/?category=hidden",
        f"/api/v1/products/{tree['secret'].id}/",
        "/api/v1/categories/hidden/",
        "/api/v1/no-such-endpoint/",
    ]:
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["code"] == "not_found", url


@pytest.mark.django_db
def test_a_page_past_the_end_is_not_found(client, tree):
    # Given a listing of 2 products on one page
    assert client.get("/api/v1/products/").json()["count"] == 2
    # When a page past the last is asked for, then it is 404 (as on the storefront)
    response = client.get("/api/v1/products/?page=9")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "No such page."}


@pytest.mark.django_db
def test_categories_list_parents_before_children_and_hide_inactive(client, tree):
    body = client.get("/api/v1/categories/").json()
    assert [c["slug"] for c in body] == ["electronics", "phones"]
    assert body[0]["children"] == [tree["phones"].id]
    assert body[1]["parent"] == tree["electronics"].id
    detail = client.get("/api/v1/categories/phones/").json()
    assert detail["name"] == "Phones"
    assert Category.objects.count() == 3


@pytest.mark.django_db
def test_openapi_schema_and_docs_are_served(client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ["/api/v1/products/", "/api/v1/auth/register/", "/api/v1/auth/token/"]:
        assert path in text
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert "cdn" not in docs.content.decode().lower()  # assets are served locally
