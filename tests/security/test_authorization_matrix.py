"""Who may do what, route by route: one table over every route the URL resolver knows, each
asked by an anonymous visitor, buyer A (who owns the orders), buyer B, a staff member without
permissions and an operator (staff with every model permission, the refund one included).

The routes come from walking the resolver (config/urls.py), so a new route without a row
fails the test, naming it, and a row whose route no longer resolves fails as a stale row.
Routes the admin generates per ModelAdmin (add, change, delete, history, autocomplete...) are
covered by one rule -- everything under /admin/ sends a visitor who is not staff to the
admin's login -- asked of every such route; the staff and operator cells of the admin are
checked on a sample (the index, each ModelAdmin's changelist, a change page, the dashboard
and its switches, the wallet top-up, the settlement upload, the flash-sale start, the chart).

A write that is refused must have no effect: rows that write carry a snapshot of what they
could change (row counts, statuses), taken before and compared after each refused cell.
Writes run the owner's cell last, after everybody else's refusals. To add a row: see
docs/security-testing.md.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

from apps.flashsales.models import FlashSale
from apps.orders.models import CheckoutTicket, Order
from apps.payments.models import Payment, Refund, Transfer, WebhookEvent
from apps.payments.services.channels import channels_ensure_sandbox
from apps.reconciliation.models import SettlementFile
from shop.models import ManualReviewItem, Switch
from shop.sharding import order_shard_aliases, shard_for_id
from tests.factories.users import UserFactory
from tests.security.conftest import (
    PASSWORD,
    Holdings,
    buyer_holdings,
    open_rate_limits,
    restore_rate_limits,
    stocked_sku,
    token_for,
)

PRINCIPALS = ("anonymous", "buyer_a", "buyer_b", "staff", "operator")
# Buyer A owns what the rows act on: its cell comes last, after everyone else was refused.
CELL_ORDER = ("anonymous", "buyer_b", "staff", "operator", "buyer_a")
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
METRICS_TOKEN = "matrix-metrics-token"
ADMIN_PREFIX = "admin/"


@dataclass(frozen=True)
class Redirect:
    """A redirect to a URL starting with ``to``."""

    to: str
    status: int = 302
    exact: bool = False  # the whole Location, not its start

    def __str__(self) -> str:
        return f"{self.status} -> {self.to}" + ("" if self.exact else "...")


Expect = int | Redirect
LOGIN = Redirect("/accounts/login/")
ADMIN_LOGIN = Redirect("/admin/login/")
HOME = Redirect("/", exact=True)


def cells(default: Expect | None = None, **by_principal: Expect) -> dict[str, Expect]:
    expected = {who: default for who in PRINCIPALS if default is not None}
    expected.update(by_principal)
    assert set(expected) == set(PRINCIPALS), f"a row must say what each principal gets: {expected}"
    return expected


def everyone(status: Expect) -> dict[str, Expect]:
    return cells(status)


def api_own(owner: Expect, *, anonymous: Expect = 401) -> dict[str, Expect]:
    """Buyer A's thing through the API: theirs, 404 for anybody else (no existence leak)."""
    return cells(404, anonymous=anonymous, buyer_a=owner)


def api_private(status: Expect) -> dict[str, Expect]:
    """The caller's own collection (orders, wallet): anyone signed in, never anonymous."""
    return cells(status, anonymous=401)


def page_own(owner: Expect) -> dict[str, Expect]:
    """Buyer A's thing in the storefront: sign in first, 404 for anybody else."""
    return cells(404, anonymous=LOGIN, buyer_a=owner)


def page_private(status: Expect) -> dict[str, Expect]:
    return cells(status, anonymous=LOGIN)


def staff_only(staff: Expect, operator: Expect) -> dict[str, Expect]:
    """An admin page: visitors who are not staff go to the admin's login."""
    return cells(ADMIN_LOGIN, staff=staff, operator=operator)


# --- The world ------------------------------------------------------------------------------


@dataclass
class World:
    users: dict[str, Any]
    clients: dict[str, Client]
    tokens: dict[str, str | None]
    a: Holdings  # buyer A's orders, payment and ticket
    sku_code: str
    product: Any
    keys: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def path(self, route: str, **values: Any) -> str:
        return "/" + route.format(**values)


def _operator(username: str):
    """Staff with every model permission (payments.refund_payment included once it exists),
    but no superuser: what the matrix checks is permissions, not the superuser shortcut."""
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.set(Permission.objects.all())
    return user


@pytest.fixture
def world() -> Iterator[World]:
    channels_ensure_sandbox()
    sku = stocked_sku(stock=100)
    users = {
        "buyer_a": UserFactory(username="buyer-a"),
        "buyer_b": UserFactory(username="buyer-b"),
        "staff": UserFactory(username="staff-member", is_staff=True),
        "operator": _operator("operator"),
    }
    a = buyer_holdings(users["buyer_a"], sku.code, extra_pending=4)
    buyer_holdings(users["buyer_b"], sku.code)
    clients = {"anonymous": Client()}
    tokens: dict[str, str | None] = {"anonymous": None}
    for who, user in users.items():
        clients[who] = Client()
        clients[who].force_login(user)
        tokens[who] = token_for(user)
    previous_limits = open_rate_limits()
    yield World(users, clients, tokens, a, sku.code, sku.product)
    restore_rate_limits(previous_limits)


# --- Snapshots of what a refused write must leave alone -------------------------------------


def _order_state(order_id: int) -> tuple:
    alias = shard_for_id(order_id)
    order = Order.objects.using(alias).get(id=order_id)
    return (
        order.status,
        Payment.objects.using(alias).filter(order_id=order_id).count(),
        Refund.objects.using(alias).filter(payment__order_id=order_id).count(),
    )


def _sharded_count(model: Any) -> int:
    return sum(model.objects.using(alias).count() for alias in order_shard_aliases())


def orders_everywhere(_: World) -> tuple:
    return _sharded_count(Order), _sharded_count(CheckoutTicket), _sharded_count(Payment)


def webhook_events(_: World) -> int:
    return WebhookEvent.objects.count()


def ledger(_: World) -> int:
    return Transfer.objects.count()


def switches(_: World) -> list:
    return list(Switch.objects.values_list("name", "on"))


def settlement_files(_: World) -> int:
    return SettlementFile.objects.count()


def flash_sales(_: World) -> int:
    return FlashSale.objects.count()


def order(pick: Callable[[World], Any]) -> Callable[[World], tuple]:
    return lambda w: (_order_state(pick(w).id), ManualReviewItem.objects.count())


# --- The table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    method: str
    route: str  # the resolver's pattern, e.g. "api/v1/orders/<id64:order_id>/"
    expect: dict[str, Expect]
    path: Callable[[World], str] | None = None  # default: the route itself
    body: Callable[[World, str], Any] | None = None
    form: bool = False  # a form post (storefront, admin) rather than JSON
    effect: Callable[[World], Any] | None = None  # unchanged by every refused cell
    variant: str = ""
    headers: Callable[[World], dict[str, str]] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    signs_out: bool = False

    @property
    def label(self) -> str:
        return f"{self.method} /{self.route}" + (f" ({self.variant})" if self.variant else "")


ORDER = "api/v1/orders/{id}/"


def at(route: str, pick: Callable[[World], Any]) -> Callable[[World], str]:
    """The concrete path of ``route`` (written with ``{id}``) for the thing ``pick`` names."""
    return lambda w: w.path(route, id=pick(w).id)


def _register(w: World, who: str) -> dict[str, str]:
    return {"username": f"new-{who}", "password": "another-horse-battery", "email": ""}


def _item(w: World, who: str) -> dict[str, Any]:
    return {"items": [{"sku": w.sku_code, "quantity": 1}]}


def _top_up(w: World, who: str) -> dict[str, Any]:
    return {"user": w.users["buyer_b"].pk, "amount": 500, "currency": "EUR", "note": "matrix"}


def _settlement(w: World, who: str) -> dict[str, Any]:
    empty = SimpleUploadedFile("settlement.csv", b"", content_type="text/csv")
    return {"channel": "alpha", "business_day": "2026-11-30", "file": empty}


def _webhook_headers(w: World) -> dict[str, str]:
    return {"HTTP_X_ACQUIRER_TIMESTAMP": "1", "HTTP_X_ACQUIRER_SIGNATURE": "sha256=forged"}


pending = lambda w: w.a.pending  # noqa: E731
pay_me = lambda w: w.a.extra_pending[0]  # noqa: E731
cancel_me = lambda w: w.a.extra_pending[1]  # noqa: E731
cancel_in_store = lambda w: w.a.extra_pending[2]  # noqa: E731
pay_in_store = lambda w: w.a.extra_pending[3]  # noqa: E731
paid = lambda w: w.a.paid  # noqa: E731
processing = lambda w: w.a.processing  # noqa: E731
ticket = lambda w: w.a.ticket  # noqa: E731

ROWS: list[Row] = [
    # --- operations and docs
    Row("GET", "healthz", everyone(200)),
    Row("GET", "readyz", everyone(200)),
    Row("GET", "metrics", cells(403, staff=200, operator=200)),
    Row(
        "GET",
        "metrics",
        everyone(200),
        variant="METRICS_TOKEN bearer",
        settings={"METRICS_TOKEN": METRICS_TOKEN},
        headers=lambda w: {"HTTP_AUTHORIZATION": f"Bearer {METRICS_TOKEN}"},
    ),
    Row("GET", "api/schema/", everyone(200)),
    Row("GET", "api/docs/", everyone(200)),
    # --- API: accounts and catalog (open to all)
    Row("POST", "api/v1/auth/register/", everyone(201), body=_register),
    Row(
        "POST",
        "api/v1/auth/token/",
        everyone(200),
        body=lambda w, who: {"username": "buyer-a", "password": PASSWORD},
    ),
    Row("GET", "api/v1/products/", everyone(200)),
    Row(
        "GET",
        "api/v1/products/<id64:product_id>/",
        everyone(200),
        path=lambda w: f"/api/v1/products/{w.product.id}/",
    ),
    Row("GET", "api/v1/categories/", everyone(200)),
    Row(
        "GET",
        "api/v1/categories/<str:slug>/",
        everyone(200),
        path=lambda w: f"/api/v1/categories/{w.product.category.slug}/",
    ),
    # --- API: a buyer's own things
    Row("GET", "api/v1/orders/", api_private(200)),
    Row("POST", "api/v1/orders/", api_private(201), body=_item, effect=orders_everywhere),
    Row("GET", "api/v1/orders/<id64:order_id>/", api_own(200), path=at(ORDER, pending)),
    Row(
        "POST",
        "api/v1/orders/<id64:order_id>/cancel/",
        api_own(200),
        path=at(ORDER + "cancel/", cancel_me),
        effect=order(cancel_me),
    ),
    Row(
        "POST",
        "api/v1/orders/<id64:order_id>/payments/",
        api_own(201),
        path=at(ORDER + "payments/", pay_me),
        body=lambda w, who: {"method": "wallet"},
        effect=order(pay_me),
    ),
    # Issue 11: refunds are for operators (staff with payments.refund_payment) only; a buyer
    # asks through refund-requests. Buyers are refused before their order is looked up: 403.
    Row(
        "POST",
        "api/v1/orders/<id64:order_id>/refunds/",
        cells(403, anonymous=401, operator=201),
        path=at(ORDER + "refunds/", paid),
        body=lambda w, who: {"amount": 100, "reason": "authorization matrix"},
        effect=order(paid),
    ),
    # A buyer asks for a refund of a processing or fulfilled order; it is a review item for
    # operators.
    Row(
        "POST",
        "api/v1/orders/<id64:order_id>/refund-requests/",
        api_own(201),
        path=at(ORDER + "refund-requests/", processing),
        body=lambda w, who: {"reason": "authorization matrix"},
        effect=order(processing),
    ),
    Row("GET", "api/v1/wallet/", api_private(200)),
    Row(
        "GET",
        "api/v1/checkout-tickets/<id64:ticket_id>/",
        api_own(200),
        path=at("api/v1/checkout-tickets/{id}/", ticket),
    ),
    # Banks sign their notifications; nobody's session or token counts, a forgery is 400.
    Row(
        "POST",
        "api/v1/payments/webhooks/<slug:channel>/",
        everyone(400),
        path=lambda w: "/api/v1/payments/webhooks/alpha/",
        body=lambda w, who: {"event_id": f"forged-{who}", "payment_id": str(w.a.payment.id)},
        headers=_webhook_headers,
        effect=webhook_events,
    ),
    # --- storefront
    Row("GET", "", everyone(200)),
    Row("GET", "products/", everyone(200)),
    Row(
        "GET",
        "products/<id64:product_id>/",
        everyone(Redirect("/products/", 301)),
        path=lambda w: f"/products/{w.product.id}/",
    ),
    Row(
        "GET",
        "products/<id64:product_id>/<slug:slug>/",
        everyone(200),
        path=lambda w: f"/products/{w.product.id}/{w.product.slug}/",
    ),
    Row("GET", "accounts/register/", everyone(200)),
    Row("GET", "accounts/login/", cells(HOME, anonymous=200)),
    Row("POST", "accounts/logout/", everyone(HOME), signs_out=True),
    Row("GET", "cart/", everyone(200)),
    Row(
        "POST",
        "cart/add/",
        everyone(Redirect("/cart/", exact=True)),
        body=lambda w, who: {"sku": w.sku_code, "quantity": "1"},
        form=True,
    ),
    Row(
        "POST",
        "cart/update/",
        everyone(Redirect("/cart/", exact=True)),
        body=lambda w, who: {"sku": w.sku_code, "quantity": "2"},
        form=True,
    ),
    Row(
        "POST",
        "checkout/",
        page_private(Redirect("/orders/")),  # the cart's two units, ordered
        form=True,
        body=lambda w, who: {"key": f"matrix-{who}"},
        effect=orders_everywhere,
    ),
    Row(
        "GET",
        "checkout/tickets/<id64:ticket_id>/",
        page_own(200),
        path=at("checkout/tickets/{id}/", ticket),
    ),
    Row("GET", "orders/", page_private(200)),
    Row("GET", "orders/<id64:order_id>/", page_own(200), path=at("orders/{id}/", pending)),
    Row(
        "POST",
        "orders/<id64:order_id>/cancel/",
        page_own(Redirect("/orders/")),
        form=True,
        path=at("orders/{id}/cancel/", cancel_in_store),
        effect=order(cancel_in_store),
    ),
    # The storefront's refund request (the same rule as the API's): the buyer's own order only.
    Row(
        "POST",
        "orders/<id64:order_id>/refund-requests/",
        page_own(Redirect("/orders/")),
        form=True,
        body=lambda w, who: {"reason": "authorization matrix", "refund_key": f"m-{who}"},
        path=at("orders/{id}/refund-requests/", processing),
        effect=order(processing),
    ),
    Row("GET", "orders/<id64:order_id>/pay/", page_own(200), path=at("orders/{id}/pay/", pay_me)),
    Row(
        "POST",
        "orders/<id64:order_id>/pay/",
        page_own(Redirect("/orders/")),
        form=True,
        variant="pay with the wallet",
        path=at("orders/{id}/pay/", pay_in_store),
        body=lambda w, who: {"method": "wallet", "key": f"matrix-pay-{who}"},
        effect=order(pay_in_store),
    ),
    # --- the operators' admin (a sample; the rule below covers every admin route for visitors)
    Row("GET", "admin/", staff_only(200, 200)),
    Row(
        "GET",
        "admin/login/",
        cells(200, staff=Redirect("/admin/", exact=True), operator=Redirect("/admin/", exact=True)),
    ),
    # Signing out of the admin is for staff; anybody else is sent to the admin's index.
    Row(
        "POST",
        "admin/logout/",
        cells(Redirect("/admin/", exact=True), staff=HOME, operator=HOME),
        signs_out=True,
    ),
    Row("GET", "admin/dashboard/", staff_only(200, 200)),
    Row(
        "POST",
        "admin/dashboard/switches/<slug:name>/",
        staff_only(403, Redirect("/admin/dashboard/", exact=True)),
        path=lambda w: "/admin/dashboard/switches/widgets_off/",
        form=True,
        body=lambda w, who: {"on": "1"},
        effect=switches,
    ),
    Row(
        "GET",
        "admin/orders/order/<path:object_id>/change/",
        staff_only(403, 200),
        path=at("admin/orders/order/{id}/change/", pending),
    ),
    Row(
        "GET",
        "admin/auth/user/<path:object_id>/change/",
        staff_only(403, 200),
        path=lambda w: f"/admin/auth/user/{w.users['buyer_b'].pk}/change/",
    ),
    Row("GET", "admin/payments/account/top-up/", staff_only(403, 200)),
    Row(
        "POST",
        "admin/payments/account/top-up/",
        staff_only(403, Redirect("/admin/payments/account/", exact=True)),
        body=_top_up,
        form=True,
        effect=ledger,
    ),
    # Importing a bank's file and reconciling the day against it is an operator's job.
    Row("GET", "admin/reconciliation/settlementfile/upload/", staff_only(403, 200)),
    Row(
        "POST",
        "admin/reconciliation/settlementfile/upload/",
        staff_only(403, 200),
        body=_settlement,
        form=True,
        effect=settlement_files,
        variant="an empty file",
    ),
    Row("GET", "admin/reconciliation/reconciliationrun/chart/", staff_only(403, 200)),
    Row("GET", "admin/flashsales/flashsale/start/", staff_only(403, 200)),
    Row(
        "POST",
        "admin/flashsales/flashsale/start/",
        staff_only(403, Redirect("/admin/flashsales/flashsale/", exact=True)),
        body=lambda w, who: {"sku": w.sku_code, "stock": "5", "per_user_limit": "1"},
        form=True,
        effect=flash_sales,
    ),
]


def changelist_rows() -> list[Row]:
    """Every registered ModelAdmin's changelist: staff need the model's permission."""
    rows = []
    for model in admin.site._registry:
        meta = model._meta
        route = f"admin/{meta.app_label}/{meta.model_name}/"
        rows.append(Row("GET", route, staff_only(403, 200), variant="changelist"))
    return rows


# --- The routes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    pattern: str  # the resolver's own spelling, prefixes joined
    sample: str  # a concrete path that resolves to it
    name: str | None


def _sample(part: Any) -> str:
    """A concrete piece of URL matching one pattern: converters and groups filled in."""
    if isinstance(part, RoutePattern):
        values = {"int": "1", "path": "1", "slug": "x", "str": "x", "uuid": "0" * 32}
        return re.sub(
            r"<(?:(\w+):)?(\w+)>", lambda m: values.get(m.group(1) or "str", "x"), str(part)
        )
    assert isinstance(part, RegexPattern), part
    text = part.regex.pattern.lstrip("^").rstrip("$")

    def group(m: re.Match) -> str:
        body = m.group(2)
        return "no-such-page" if body == ".*" else body.split("|")[0]

    return re.sub(r"\(\?P<(\w+)>([^)]*)\)", group, text).replace("\\", "")


def walk(resolver: URLResolver | None = None, prefix: str = "", sample: str = "", ns: str = ""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        pattern, concrete = prefix + str(entry.pattern), sample + _sample(entry.pattern)
        if isinstance(entry, URLResolver):
            space = ":".join(filter(None, [ns, entry.namespace or ""]))
            yield from walk(entry, pattern, concrete, space)
        else:
            assert isinstance(entry, URLPattern)
            name = entry.name and ":".join(filter(None, [ns, entry.name]))
            yield Route(pattern, "/" + concrete, name)


# --- The test -------------------------------------------------------------------------------


def _send(world: World, who: str, row: Row) -> Any:
    client = world.clients[who]
    path = row.path(world) if row.path else "/" + row.route
    extra: dict[str, str] = dict(row.headers(world)) if row.headers else {}
    if path.startswith("/api/"):
        if world.tokens[who] and "HTTP_AUTHORIZATION" not in extra:
            extra["HTTP_AUTHORIZATION"] = f"Token {world.tokens[who]}"
        if row.method in WRITES:
            extra["HTTP_IDEMPOTENCY_KEY"] = f"matrix-{next(world.keys)}"
    body = row.body(world, who) if row.body else None
    with override_settings(**row.settings):
        if row.method == "GET":
            return client.get(path, **extra)
        if row.form:
            return client.post(path, body or {}, **extra)
        data = json.dumps(body) if body is not None else ""
        return client.generic(row.method, path, data, content_type="application/json", **extra)


def _outcome(response: Any) -> str:
    location = response.get("Location")
    return f"{response.status_code} -> {location}" if location else str(response.status_code)


def _matches(response: Any, expected: Expect) -> bool:
    if isinstance(expected, Redirect):
        location = response.get("Location") or ""
        where = location == expected.to if expected.exact else location.startswith(expected.to)
        return response.status_code == expected.status and where
    return response.status_code == expected


def _refused(expected: Expect) -> bool:
    if isinstance(expected, Redirect):
        return expected.to in (LOGIN.to, ADMIN_LOGIN.to)
    return expected >= 400


@pytest.mark.django_db(databases="__all__")
def test_every_route_answers_each_principal_as_the_table_says(world):
    routes = list(walk())
    by_pattern = {route.pattern: route for route in routes}
    rows = ROWS + changelist_rows()
    problems: list[str] = []

    # Every route has a row or falls under the admin rule; every row names a route.
    covered = {row.route for row in rows}
    for route in routes:
        if route.pattern not in covered and not route.pattern.startswith(ADMIN_PREFIX):
            problems.append(f"route without a row: /{route.pattern} (name {route.name!r})")
    for row in rows:
        if row.route not in by_pattern:
            problems.append(f"stale row: {row.label} -- no such route")

    # Each row, each principal.
    for row in rows:
        if row.route not in by_pattern:
            continue
        for who in CELL_ORDER:
            expected = row.expect[who]
            before = row.effect(world) if row.effect and _refused(expected) else None
            response = _send(world, who, row)
            if not _matches(response, expected):
                problems.append(
                    f"{row.label} as {who}: expected {expected}, got {_outcome(response)}"
                )
            if row.effect and _refused(expected) and row.effect(world) != before:
                problems.append(f"{row.label} as {who}: refused, but it changed something")
            if row.signs_out and who != "anonymous":
                world.clients[who].force_login(world.users[who])

    # The admin rule: every other route under /admin/ sends visitors who are not staff to its
    # login (the routes with rows of their own were asked above).
    for route in routes:
        if not route.pattern.startswith(ADMIN_PREFIX) or route.pattern in covered:
            continue
        for who in ("anonymous", "buyer_a"):
            response = world.clients[who].get(route.sample)
            if not _matches(response, ADMIN_LOGIN):
                problems.append(
                    f"GET {route.sample} (/{route.pattern}) as {who}: expected {ADMIN_LOGIN}, "
                    f"got {_outcome(response)}"
                )

    assert not problems, f"{len(problems)} cells disagree with the table:\n" + "\n".join(problems)
