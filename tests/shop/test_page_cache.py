"""Shared pages for anonymous readers: hits skip the database, edits retire them at once."""

from __future__ import annotations

import pytest

from apps.catalog import services
from apps.catalog.models import Sku
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory


def _url(product) -> str:
    return f"/products/{product.id}/{product.slug}/"


@pytest.mark.django_db
def test_a_second_anonymous_read_is_a_hit_without_queries(client, django_assert_num_queries):
    product = product_with_skus()
    first = client.get(_url(product))
    assert first["X-Page-Cache"] == "miss"

    with django_assert_num_queries(0):
        second = client.get(_url(product))
    assert second["X-Page-Cache"] == "hit"
    assert second.content == first.content
    assert second["Content-Type"] == first["Content-Type"]
    assert second["X-Frame-Options"] == "DENY"


@pytest.mark.django_db(transaction=True)
def test_an_edit_retires_shared_pages_as_soon_as_it_commits(client):
    product = product_with_skus()
    sku = Sku.objects.get(product=product)
    client.get(_url(product))
    assert client.get(_url(product))["X-Page-Cache"] == "hit"
    assert client.get("/api/v1/products/")["X-Page-Cache"] == "miss"

    services.sku_price_set(sku=sku, price=4321)

    page = client.get(_url(product))
    assert page["X-Page-Cache"] == "miss"
    assert "€43.21" in page.content.decode()
    listing = client.get("/api/v1/products/")
    assert listing["X-Page-Cache"] == "miss"
    assert listing.json()["results"][0]["skus"][0]["price"] == 4321


@pytest.mark.django_db
def test_logged_in_buyers_and_token_clients_never_share_a_page(client):
    product = product_with_skus()
    client.get(_url(product))
    client.force_login(UserFactory(username="henry"))

    page = client.get(_url(product))
    assert "X-Page-Cache" not in page
    assert "henry" in page.content.decode()
    api = client.get(f"/api/v1/products/{product.id}/", HTTP_AUTHORIZATION="Token x")
    assert "X-Page-Cache" not in api


@pytest.mark.django_db
def test_searches_and_odd_parameters_are_not_stored(client):
    product_with_skus()
    for url in ["/products/?q=prod", "/products/?utm_source=x", "/api/v1/products/?q=prod"]:
        client.get(url)
        assert client.get(url)["X-Page-Cache"] == "miss", url
    client.get("/products/?page=1")
    assert client.get("/products/?page=1")["X-Page-Cache"] == "hit"


@pytest.mark.django_db
def test_api_pages_are_kept_apart_per_host(client):
    for _ in range(3):
        product_with_skus()
    client.get("/api/v1/products/?page_size=1", HTTP_HOST="localhost")
    other = client.get("/api/v1/products/?page_size=1", HTTP_HOST="127.0.0.1")
    assert other["X-Page-Cache"] == "miss"
    assert other.json()["next"].startswith("http://127.0.0.1/")


@pytest.mark.django_db
def test_errors_and_other_paths_are_never_stored(client):
    client.get("/products/424242/")
    missing = client.get("/products/424242/")
    assert missing.status_code == 404
    assert missing["X-Page-Cache"] == "miss"  # looked up, never stored
    assert "X-Page-Cache" not in client.get("/healthz")  # not even looked up
    assert "X-Page-Cache" not in client.get("/accounts/login/")


@pytest.mark.django_db
def test_disabled_by_an_empty_path_pattern(client, settings):
    settings.PAGE_CACHE_PATHS = ""
    product = product_with_skus()
    client.get(_url(product))
    assert "X-Page-Cache" not in client.get(_url(product))


@pytest.mark.django_db
def test_a_page_past_its_fresh_spell_is_served_stale_once_its_groups_changed_if_asked(
    client, settings
):
    from shop.runtime import switch_set

    settings.PAGE_CACHE_TTL = 0.2
    product = product_with_skus()
    first = client.get(_url(product))
    assert client.get(_url(product))["X-Page-Cache"] == "hit"
    # The switch bumps the page groups: the stored page no longer matches them
    switch_set(name="serve_stale", on=True)
    stale = client.get(_url(product))
    assert (stale["X-Page-Cache"], stale.content) == ("stale", first.content)
