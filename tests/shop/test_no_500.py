"""No input makes a 500 (docs/input-limits.md): every request the hand-found cases and their
cousins describe gets a 4xx with the API.md body under /api/ (or the friendly page on the
storefront), and a refused one writes nothing. Webhooks: tests/payments/test_webhooks.py;
settlement files: tests/reconciliation/test_settlement_upload.py."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from rest_framework.authtoken.models import Token

from apps.catalog import selectors
from apps.inventory.models import Reservation
from apps.orders.cart import SESSION_KEY
from apps.orders.models import Order
from apps.payments.models import Payment
from shop.cache import versioned_key
from shop.models import IdempotencyRecord
from shop.sharding import order_shard_aliases
from tests.factories.catalog import CategoryFactory, product_with_skus
from tests.payments.conftest import channels, order, shopper  # noqa: F401

ALL = "__all__"
pytestmark = pytest.mark.django_db(databases=ALL)

BIG = "1" * 5000  # int() refuses it (4,300-digit limit): ValueError
HUGE = "1" * 400  # int() reads it, a bigint column does not: OverflowError / DataError
PAST_64_BITS = str(2**64)
JUNK_PAGES = ["0", "-1", "abc", "²", "１", "٣", "1e3", " 2", "2 ", "1_0", str(10**30), BIG]


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def row_counts() -> dict[str, int]:
    """Rows a refused request must not have written, across every database."""
    counts = {
        "users": get_user_model().objects.count(),
        "tokens": Token.objects.count(),
        "reservations": Reservation.objects.count(),
    }
    for alias in order_shard_aliases():
        counts[f"orders@{alias}"] = Order.objects.using(alias).count()
        counts[f"payments@{alias}"] = Payment.objects.using(alias).count()
        counts[f"idempotency@{alias}"] = IdempotencyRecord.objects.using(alias).count()
    return counts


def assert_api_error(response, status: int, *codes: str) -> dict:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert {"code", "detail"} <= set(body), body
    assert body["code"] in codes, body
    return body


@pytest.fixture
def catalog():
    """30 visible products in one category: two storefront pages of 24, one API page of 100."""
    category = CategoryFactory(name="Lamps", slug="lamps")
    for _ in range(30):
        product_with_skus(category=category)
    return category


@pytest.fixture
def api(shopper):  # noqa: F811
    from tests.orders.conftest import api_client

    return api_client(shopper)


@pytest.fixture
def web(client, shopper):  # noqa: F811
    client.force_login(shopper)
    return client


# --- JSON bodies: depth and size bounded in one parser (shop.parsers.BoundedJSONParser) ---------


@pytest.mark.parametrize("depth", [100, 1000, 20_000])
@pytest.mark.parametrize(
    ("path", "who"), [("/api/v1/auth/register/", "anonymous"), ("/api/v1/orders/", "buyer")]
)
def test_json_nested_too_deep_is_a_parse_error_and_writes_nothing(client, api, path, who, depth):
    # Given any JSON endpoint, anonymous or logged in
    caller = api if who == "buyer" else client
    before = row_counts()
    # When the body nests deeper than JSON_MAX_DEPTH
    response = caller.post(
        path, nested(depth), content_type="application/json", HTTP_IDEMPOTENCY_KEY="deep"
    )
    # Then it is a 400 parse_error, and nothing was written
    assert_api_error(response, 400, "parse_error")
    assert row_counts() == before


@pytest.mark.parametrize("depth", [100, 1000])
def test_json_nested_too_deep_on_the_login_endpoint(client, depth):
    # Both the login throttle (it reads the username itself) and the view's parser.
    response = client.post("/api/v1/auth/token/", nested(depth), content_type="application/json")
    assert_api_error(response, 400, "parse_error")


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{\x00}\x00",  # UTF-16
        b'{"items": NaN}',
        b'{"items": [{"sku": "x", "quantity": 1e999}]}',
        b'{"items": [{"sku": "x", "quantity": ' + BIG.encode() + b"}]}",
        b'{"items": [',
    ],
)
def test_bodies_that_are_not_json_are_a_parse_error(api, body):
    before = row_counts()
    response = api.post(
        "/api/v1/orders/", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-bad"
    )
    assert_api_error(response, 400, "parse_error")
    assert row_counts() == before


def test_a_json_body_over_the_bound_is_413_and_writes_nothing(api, settings):
    # Given a body that is valid JSON but larger than API_MAX_JSON_BYTES
    settings.API_MAX_JSON_BYTES = 1024
    sku = product_with_skus(stock=5).skus.get()
    body = json.dumps({"items": [{"sku": sku.code, "quantity": 1}], "note": "x" * 2000})
    before = row_counts()
    response = api.post(
        "/api/v1/orders/", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-big"
    )
    assert_api_error(response, 413, "payload_too_large")
    assert row_counts() == before
    # and the same order within the bound goes through
    small = json.dumps({"items": [{"sku": sku.code, "quantity": 1}]})
    response = api.post(
        "/api/v1/orders/", small, content_type="application/json", HTTP_IDEMPOTENCY_KEY="k-ok"
    )
    assert response.status_code == 201


def test_bodies_django_refuses_are_api_errors_not_bare_pages(api, client, settings):
    before = row_counts()
    many_fields = api.post(
        "/api/v1/orders/",
        b"a=1&" * (settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1),
        content_type="application/x-www-form-urlencoded",
        HTTP_IDEMPOTENCY_KEY="k-fields",
    )
    assert_api_error(many_fields, 400, "validation_error")
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    big_form = api.post(
        "/api/v1/orders/",
        b"items=" + b"x" * 5000,
        content_type="application/x-www-form-urlencoded",
        HTTP_IDEMPOTENCY_KEY="k-form",
    )
    assert_api_error(big_form, 413, "payload_too_large")
    assert row_counts() == before
    other_host = client.get("/api/v1/products/", HTTP_HOST="evil.example")
    assert_api_error(other_host, 400, "bad_request")


@pytest.mark.parametrize("quantity", ["１", "٣", "1.0", 1.0, "1_0", " 1", True, BIG, 2**64])
def test_order_quantities_are_strict_whole_numbers(api, quantity):
    # Given a SKU in stock
    sku = product_with_skus(stock=5).skus.get()
    before = row_counts()
    # When the quantity is not plain ASCII digits (or a JSON integer) in range
    response = api.post(
        "/api/v1/orders/",
        {"items": [{"sku": sku.code, "quantity": quantity}]},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k-quantity",
    )
    # Then it is refused, nothing reserved
    assert_api_error(response, 400, "validation_error")
    assert row_counts() == before


@pytest.mark.parametrize("key", ["\x00", "é" * 3, "k" * 256, "tab\tkey", "\x7f"])
def test_odd_idempotency_keys_are_400_and_write_nothing(api, key):
    sku = product_with_skus(stock=5).skus.get()
    before = row_counts()
    response = api.post(
        "/api/v1/orders/",
        {"items": [{"sku": sku.code, "quantity": 1}]},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert_api_error(response, 400, "validation_error")
    assert row_counts() == before


# --- Pages: past the end is 404, junk is 400 on the API and the friendly 404 on the storefront --


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/products/?page=1000000000000000000",
        "/api/v1/products/?page=9223372036854775807",
        "/api/v1/products/?page=3",
        "/api/v1/products/?category=lamps&page=1000000000000000000",
        "/api/v1/products/?q=Product&page=1000000000000000000",
        "/api/v1/products/?page_size=100&page=2",
    ],
)
def test_an_api_product_page_past_the_end_is_not_found(client, catalog, url):
    assert_api_error(client.get(url), 404, "not_found")


@pytest.mark.parametrize("page", [*JUNK_PAGES, PAST_64_BITS])
def test_an_api_product_page_that_is_no_page_number_is_a_validation_error(client, catalog, page):
    body = assert_api_error(
        client.get("/api/v1/products/", {"page": page}), 400, "validation_error"
    )
    assert "page" in body["fields"]


@pytest.mark.parametrize("page_size", ["0", "101", "１", BIG, "-1"])
def test_an_api_page_size_out_of_range_is_a_validation_error(client, catalog, page_size):
    response = client.get("/api/v1/products/", {"page_size": page_size})
    assert_api_error(response, 400, "validation_error")


@pytest.mark.parametrize(
    "url",
    [
        "/products/?page=1000000000000000000",
        "/products/?page=2",  # 30 products, 24 a page: page 2 exists ...
        "/products/?page=3",  # ... page 3 does not
        "/products/?category=lamps&page=1000000000000000000",
        "/products/?q=Product&page=1000000000000000000",
        *[f"/products/?page={page}" for page in [*JUNK_PAGES, PAST_64_BITS]],
    ],
)
def test_a_storefront_page_that_is_not_a_page_of_the_listing_is_the_friendly_404(
    client, catalog, url
):
    response = client.get(url)
    if url == "/products/?page=2":
        assert response.status_code == 200
        assert len(response.context["page"].items) == 6
        return
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert "couldn’t find" in response.content.decode()


def test_order_pages_past_the_end_or_junk_are_404_or_400(api, web, order):  # noqa: F811
    # Given a buyer with one order: page 1 exists, page 2 does not
    assert api.get("/api/v1/orders/").json()["count"] == 1
    assert web.get("/orders/").status_code == 200
    for page in ["2", "1000000000000000000", "9223372036854775807"]:
        assert_api_error(api.get("/api/v1/orders/", {"page": page}), 404, "not_found")
        assert web.get("/orders/", {"page": page}).status_code == 404
    for page in [*JUNK_PAGES, PAST_64_BITS]:
        assert_api_error(api.get("/api/v1/orders/", {"page": page}), 400, "validation_error")
        assert web.get("/orders/", {"page": page}).status_code == 404


def test_a_buyer_without_orders_has_an_empty_first_page(api, web):
    assert api.get("/api/v1/orders/").json() == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }
    assert web.get("/orders/").status_code == 200


def test_pages_that_do_not_exist_are_never_cached(client, catalog):
    # When anonymous readers ask for pages past the end, junk and other spellings of page 1
    for url in [
        "/products/?page=999",
        "/products/?page=01",
        "/products/?page=1&page=1",
        "/products/?page_size=7",  # the storefront reads no page_size
        "/?utm=1",
        "/api/v1/products/?page=999",
        "/api/v1/products/?page_size=010",
    ]:
        client.get(url)
        # Then no shared page is stored for them
        assert client.get(url)["X-Page-Cache"] == "miss", url
    # and no listing page past the end is stored either
    for page in (2, 999):
        key, groups = selectors.listing_cache_key(catalog.id, "name", page, 24)
        assert cache.get(versioned_key(key, groups)) is None
        key, groups = selectors.listing_cache_key(None, "name", page, 24)
        assert cache.get(versioned_key(key, groups)) is None
    # while the pages that exist still are
    client.get("/products/?page=2")
    assert client.get("/products/?page=2")["X-Page-Cache"] == "hit"


# --- Ids in paths: 1..2**63-1, else 404 before any view (shop.converters.Id64Converter) ----------

BAD_IDS = [
    BIG,
    HUGE,
    PAST_64_BITS,
    str(2**63),
    "9999999999999999999",
    "0",
    "00000000000000000000001",
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_ids_out_of_range_in_api_paths_are_not_found(api, bad_id):
    before = row_counts()
    for path in [f"/api/v1/products/{bad_id}/", f"/api/v1/orders/{bad_id}/"]:
        assert_api_error(api.get(path), 404, "not_found")
    assert_api_error(api.get(f"/api/v1/checkout-tickets/{bad_id}/"), 404, "not_found")
    for path in [
        f"/api/v1/orders/{bad_id}/cancel/",
        f"/api/v1/orders/{bad_id}/payments/",
        f"/api/v1/orders/{bad_id}/refunds/",
    ]:
        response = api.post(
            path,
            {"method": "wallet", "amount": 1, "reason": "x"},
            format="json",
            HTTP_IDEMPOTENCY_KEY=f"k-{len(bad_id)}-{path.rsplit('/', 2)[-2]}",
        )
        assert_api_error(response, 404, "not_found")
    assert row_counts() == before


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_ids_out_of_range_in_storefront_paths_are_the_friendly_404(web, bad_id):
    before = row_counts()
    for path in [
        f"/products/{bad_id}/",
        f"/products/{bad_id}/some-slug/",
        f"/orders/{bad_id}/",
        f"/orders/{bad_id}/pay/",
        f"/checkout/tickets/{bad_id}/",
    ]:
        assert web.get(path).status_code == 404, path
    assert web.post(f"/orders/{bad_id}/cancel/").status_code == 404
    assert web.post(f"/orders/{bad_id}/pay/", {"method": "wallet"}).status_code == 404
    assert row_counts() == before


@pytest.mark.parametrize("bad_id", [*BAD_IDS, "²", "abc"])
def test_odd_ids_in_the_admin_are_not_server_errors(admin_client, bad_id):
    for model in ["orders/order", "payments/payment", "orders/checkoutticket", "catalog/product"]:
        response = admin_client.get(f"/admin/{model}/{bad_id}/change/")
        assert response.status_code in (302, 404), (model, response.status_code)
    for model in ["orders/order", "payments/payment"]:
        response = admin_client.get(f"/admin/{model}/", {"q": bad_id})
        assert response.status_code == 200, model
        assert response.context["cl"].result_count == 0


@pytest.mark.parametrize("value", ["abc", "²", "-1", "0", BIG, PAST_64_BITS, "\x00"])
def test_a_junk_category_filter_in_the_admin_is_the_invalid_filter_notice(admin_client, value):
    product_with_skus()  # the filter is offered (and applied) once a category exists
    response = admin_client.get("/admin/catalog/product/", {"in_category": value})
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")


# --- Other query parameters, form fields and headers -------------------------------------------


@pytest.mark.parametrize("category", ["²", "１", "٣", BIG[:140], "\x00"])
def test_a_category_filter_that_is_no_id_nor_slug_is_not_found(client, catalog, category):
    response = client.get("/api/v1/products/", {"category": category})
    assert response.status_code in (400, 404)
    assert_api_error(response, response.status_code, "not_found", "validation_error")


@pytest.mark.parametrize("query", ["\x00", "lamp\x00", "\x1b[31m", "\x7f"])
def test_a_storefront_search_with_control_characters_is_answered(client, catalog, query):
    response = client.get("/products/", {"q": query})
    assert response.status_code == 200


@pytest.mark.parametrize("sku", ["\x00", "x" * 5000, "SKU\x00-1", "²"])
def test_adding_an_unknown_sku_to_the_cart_says_so(web, sku):
    response = web.post("/cart/add/", {"sku": sku, "quantity": "1"})
    assert response.status_code == 302
    assert web.session.get(SESSION_KEY, {}) == {}


@pytest.mark.parametrize("quantity", ["abc", "²", "１", "0", "-1", BIG, "1e3"])
def test_junk_cart_quantities_change_nothing(web, quantity):
    # Given a cart holding 2 of a SKU
    sku = product_with_skus(stock=10).skus.get()
    web.post("/cart/add/", {"sku": sku.code, "quantity": "2"})
    assert web.session[SESSION_KEY] == {sku.code: 2}
    # When junk quantities are sent to both cart forms
    add = web.post("/cart/add/", {"sku": sku.code, "quantity": quantity})
    update = web.post("/cart/update/", {f"quantity-{sku.code}": quantity})
    # Then both answer with the cart page and the cart is as it was ("0" removes the line)
    assert add.status_code == update.status_code == 302
    expected = {} if quantity == "0" else {sku.code: 2}
    assert web.session[SESSION_KEY] == expected


@pytest.mark.parametrize("key", ["\x00", "k" * 5000, "é", "\x00" * 300])
def test_odd_form_keys_at_checkout_and_payment_are_replaced(web, shopper, key):  # noqa: F811
    # Given a cart with one item
    sku = product_with_skus(stock=10).skus.get()
    web.post("/cart/add/", {"sku": sku.code, "quantity": "1"})
    # When the checkout form carries an odd key, then the order is placed under a fresh one
    response = web.post("/checkout/", {"checkout_key": key})
    assert response.status_code == 302
    placed = [
        Order.objects.using(a).filter(user_id=shopper.id).first() for a in order_shard_aliases()
    ]
    order_ = next(o for o in placed if o is not None)
    assert response["Location"] == f"/orders/{order_.id}/"
    # and so does the payment form (the wallet is topped up: it is paid)
    paid = web.post(f"/orders/{order_.id}/pay/", {"method": "wallet", "pay_key": key})
    assert paid.status_code == 302
    assert Payment.objects.using(order_._state.db).filter(order_id=order_.id).count() == 1


@pytest.mark.parametrize("header", ["Bearer é", "Bearer \x80\xff", "\x00", "Bearer " + "x" * 5000])
def test_metrics_with_an_odd_authorization_header_is_forbidden(client, settings, header):
    settings.METRICS_TOKEN = "scrape-token"
    assert client.get("/metrics", HTTP_AUTHORIZATION=header).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token").status_code == 200


@pytest.mark.parametrize("amount", [str(10**30), str(2**63), "1" * 5000, "²"])
def test_operator_amounts_past_their_columns_are_form_errors(admin_client, shopper, amount):  # noqa: F811
    from apps.flashsales.models import FlashSale
    from apps.inventory.models import Stock
    from apps.payments.models import Transfer

    # Given a SKU with 5 units and a buyer's wallet
    sku = product_with_skus(stock=5).skus.get()
    transfers = Transfer.objects.count()
    # When an operator types an amount no column can hold, then each form says so
    top_up = admin_client.post(
        "/admin/payments/account/top-up/",
        {"user": shopper.id, "amount": amount, "currency": "EUR", "note": "typo"},
    )
    receive = admin_client.post(f"/admin/inventory/stock/{sku.id}/change/", {"receive": amount})
    sale = admin_client.post(
        "/admin/flashsales/flashsale/start/", {"sku": sku.code, "stock": amount}
    )
    for response, field in ((top_up, "amount"), (receive, "receive"), (sale, "stock")):
        assert response.status_code == 200
        assert field in response.context["adminform" if response is receive else "form"].errors
    # and nothing was written
    assert Transfer.objects.count() == transfers
    assert Stock.objects.get(sku=sku).received == 5
    assert not FlashSale.objects.exists()
