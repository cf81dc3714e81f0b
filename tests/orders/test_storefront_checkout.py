"""The storefront: cart in the session, checkout, order pages."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from apps.orders.models import Order
from shop.sharding import order_shard_aliases
from tests.factories.users import UserFactory

ALL = "__all__"


def _orders() -> list[Order]:
    return [o for alias in order_shard_aliases() for o in Order.objects.using(alias).all()]


@pytest.mark.django_db(databases=ALL)
def test_a_shared_product_page_still_carries_an_add_to_cart_form(client, sku):
    product = sku.product
    url = f"/products/{product.id}/{product.slug}/"
    client.get(url)
    page = client.get(url)
    assert page["X-Page-Cache"] == "hit"
    html = page.content.decode()
    assert 'action="/cart/add/"' in html
    assert "csrfmiddlewaretoken" not in html  # shared pages carry no per-visitor token


@pytest.mark.django_db(databases=ALL)
def test_a_visitor_without_a_session_can_add_to_the_cart(sku):
    visitor = Client(enforce_csrf_checks=True)
    response = visitor.post("/cart/add/", {"sku": sku.code, "quantity": "2"})
    assert response.status_code == 302
    cart = visitor.get("/cart/")
    assert sku.code in cart.content.decode()
    assert cart.context["total"] == 2000


@pytest.mark.django_db(databases=ALL)
def test_a_browser_with_a_session_needs_the_csrf_token(sku):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(UserFactory(username="ivy"))
    refused = browser.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    assert refused.status_code == 403
    page = browser.get("/cart/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    accepted = browser.post(
        "/cart/add/", {"sku": sku.code, "quantity": "1", "csrfmiddlewaretoken": token.group(1)}
    )
    assert accepted.status_code == 302


@pytest.mark.django_db(databases=ALL)
def test_checkout_needs_a_login(client, sku):
    client.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    response = client.post("/checkout/", {"checkout_key": "k"})
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]
    assert _orders() == []


@pytest.mark.django_db(databases=ALL)
def test_checkout_places_one_order_even_when_submitted_twice(client, sku):
    client.force_login(UserFactory(username="jade"))
    client.post("/cart/add/", {"sku": sku.code, "quantity": "3"})
    key = client.get("/cart/").context["checkout_key"]

    first = client.post("/checkout/", {"checkout_key": key})
    orders = _orders()
    assert len(orders) == 1
    assert first["Location"] == f"/orders/{orders[0].id}/"
    client.post("/cart/add/", {"sku": sku.code, "quantity": "3"})  # same cart again
    second = client.post("/checkout/", {"checkout_key": key})  # the double click
    assert second["Location"] == first["Location"]
    assert len(_orders()) == 1

    page = client.get(first["Location"])
    html = page.content.decode()
    assert page.status_code == 200
    assert "data-expires" in html and str(orders[0].id) in html
    assert str(orders[0].id) in client.get("/orders/").content.decode()


@pytest.mark.django_db(databases=ALL)
def test_sold_out_checkout_explains_and_keeps_the_cart(client, sku):
    client.force_login(UserFactory(username="kim"))
    client.post("/cart/add/", {"sku": sku.code, "quantity": "10"})
    from apps.inventory.models import Stock

    Stock.objects.filter(sku=sku).update(available=5, sold=5)
    response = client.post("/checkout/", {"checkout_key": "sold-out"}, follow=True)
    assert "sold out" in response.content.decode().lower()
    assert _orders() == []
    assert client.get("/cart/").context["lines"][0]["quantity"] == 10


@pytest.mark.django_db(databases=ALL)
def test_buyers_cancel_their_own_orders_only(client, sku):
    owner = UserFactory(username="lee")
    client.force_login(owner)
    client.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    location = client.post("/checkout/", {"checkout_key": "c1"})["Location"]
    order_id = location.strip("/").split("/")[-1]

    other = Client()
    other.force_login(UserFactory(username="mo"))
    assert other.get(location).status_code == 404
    assert other.post(f"/orders/{order_id}/cancel/").status_code == 404

    client.post(f"/orders/{order_id}/cancel/")
    assert _orders()[0].status == "cancelled"


@pytest.mark.django_db(databases=ALL)
def test_cart_update_changes_and_removes_lines(client, sku):
    client.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    client.post("/cart/update/", {f"quantity-{sku.code}": "4"})
    assert client.get("/cart/").context["lines"][0]["quantity"] == 4
    client.post("/cart/update/", {f"remove-{sku.code}": "1"})
    assert client.get("/cart/").context["lines"] == []


@pytest.mark.django_db(databases=ALL)
def test_resubmitting_an_old_form_after_the_cart_changed_is_explained(client, sku):
    client.force_login(UserFactory(username="nia"))
    client.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    client.post("/checkout/", {"checkout_key": "form-1"})
    client.post("/cart/add/", {"sku": sku.code, "quantity": "2"})  # a different cart
    response = client.post("/checkout/", {"checkout_key": "form-1"}, follow=True)
    assert response.status_code == 200
    assert "cart changed" in response.content.decode()
    assert len(_orders()) == 1
