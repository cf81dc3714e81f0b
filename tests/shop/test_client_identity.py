"""Per-client write limit (``user_writes``): keyed on the authenticated user, else the client's
address. An ``Authorization`` header is never an identity by itself: a junk token counts under
its IP (and is a 401 where the route authenticates with tokens), and spacing variants of one
valid token are that one user.

Each test runs on the shared limiter (Redis, services profile), on the embedded profile's
local-memory cache, and with Redis unreachable (the per-process fallback).
"""

from __future__ import annotations

import secrets

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.orders.models import Order
from shop.models import IdempotencyRecord, RateLimitRule
from shop.runtime import runtime_refresh
from shop.sharding import order_shard_aliases
from tests.factories.users import UserFactory
from tests.orders.conftest import new_key

pytestmark = pytest.mark.django_db(databases="__all__")
User = get_user_model()
PASSWORD = "a-long-secret-9"


def _writes_budget(n: int) -> None:
    RateLimitRule.objects.update_or_create(
        name="user_writes", defaults={"rate": n, "period_seconds": 600, "burst": n}
    )
    runtime_refresh()


def _register(client: APIClient, username: str, authorization: str | None = None):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization is not None else {}
    return client.post(
        "/api/v1/auth/register/",
        {"username": username, "password": PASSWORD},
        format="json",
        **headers,
    )


def _post_order(authorization: str, remote_addr: str = "127.0.0.1"):
    return APIClient().post(
        "/api/v1/orders/",
        {"items": []},
        format="json",
        HTTP_AUTHORIZATION=authorization,
        HTTP_IDEMPOTENCY_KEY=new_key(),
        REMOTE_ADDR=remote_addr,
    )


def _orders_written() -> int:
    return sum(Order.objects.using(alias).count() for alias in order_shard_aliases()) + sum(
        IdempotencyRecord.objects.using(alias).count() for alias in order_shard_aliases()
    )


def test_junk_tokens_get_no_budget_of_their_own_registrations_count_under_the_ip(limiter):
    # Given a budget of 3 writes per client
    _writes_budget(3)
    client = APIClient()
    junk = [
        f"Token {secrets.token_hex(20)}",
        f"token {secrets.token_hex(20)}",
        f"Token\t{secrets.token_hex(20)}",
        f"Token {secrets.token_hex(20)} {secrets.token_hex(4)}",
        "Token",
        f"TOKEN   {secrets.token_hex(20)}",
    ]
    # When one address registers once per junk header
    statuses = [_register(client, f"bot{i}", header).status_code for i, header in enumerate(junk)]
    # Then the address's budget is spent after 3: the header gave no fresh budget
    assert statuses == [201, 201, 201, 429, 429, 429]
    assert User.objects.count() == 3  # nothing created past the budget (nor a password hash)
    assert Token.objects.count() == 3
    # ... and a request with no header at all from that address is that same client
    assert _register(client, "plain").status_code == 429
    assert User.objects.count() == 3
    # ... while another address has its own budget
    other = client.post(
        "/api/v1/auth/register/",
        {"username": "elsewhere", "password": PASSWORD},
        format="json",
        REMOTE_ADDR="198.51.100.20",
        HTTP_AUTHORIZATION=f"Token {secrets.token_hex(20)}",
    )
    assert other.status_code == 201


def test_spacing_variants_of_a_valid_token_are_one_user_and_users_have_their_own_budget(
    limiter,
):
    # Given a budget of 2 writes and two buyers behind one address
    _writes_budget(2)
    first = Token.objects.create(user=UserFactory(username="spacey")).key
    second = Token.objects.create(user=UserFactory(username="neighbour")).key
    # When the first buyer writes with the canonical header, then with spacing/case variants
    canonical = [_post_order(f"Token {first}").status_code for _ in range(2)]
    variants = [
        _post_order(header).status_code
        for header in (f"Token   {first}", f"Token\t{first}", f"token {first}", f" Token {first} ")
    ]
    # Then every variant is the same buyer, whose budget is spent (400: an empty cart)
    assert canonical == [400, 400]
    assert variants == [429, 429, 429, 429]
    # ... and the other buyer from the same address still has a whole budget
    assert [_post_order(f"Token {second}").status_code for _ in range(3)] == [400, 400, 429]
    assert _orders_written() == 0


def test_an_invalid_token_on_a_token_route_is_401_and_counts_under_its_ip(limiter):
    # Given a budget of 2 writes and a valid buyer behind the same address
    _writes_budget(2)
    valid = Token.objects.create(user=UserFactory(username="honest")).key
    # When junk tokens try to place orders
    first = _post_order(f"Token {secrets.token_hex(20)}")
    # Then each is refused as unauthenticated, with the API.md body, and writes nothing
    assert first.status_code == 401
    assert first.json() == {"code": "authentication_failed", "detail": "Invalid token."}
    assert first["WWW-Authenticate"] == "Token"
    second = _post_order(f"Token {secrets.token_hex(20)}")
    assert second.status_code == 401
    # ... and the address's budget is spent: a third junk token is no new identity
    third = _post_order(f"Token {secrets.token_hex(20)}")
    assert third.status_code == 429
    assert third.json()["layer"] == "user_writes"
    # ... the valid buyer at that address is a client of their own
    assert _post_order(f"Token {valid}").status_code == 400
    assert _orders_written() == 0


def test_an_inactive_users_token_is_401_and_not_an_identity(limiter):
    _writes_budget(1)
    sleeper = UserFactory(username="sleeper")
    key = Token.objects.create(user=sleeper).key
    sleeper.is_active = False
    sleeper.save(update_fields=["is_active"])
    refused = _post_order(f"Token {key}")
    assert refused.status_code == 401
    assert refused.json()["code"] == "authentication_failed"
    assert _post_order(f"Token {secrets.token_hex(20)}").status_code == 429  # one IP budget
    assert _orders_written() == 0


def test_a_token_write_looks_the_token_up_once(settings):
    # The middleware resolves the token; DRF reuses the answer instead of a second lookup.
    settings.AUTH_TOKEN_CACHE_TTL = 0
    key = Token.objects.create(user=UserFactory(username="once")).key
    with CaptureQueriesContext(connection) as queries:
        assert _post_order(f"Token {key}").status_code == 400
    assert sum('"authtoken_token"' in q["sql"] for q in queries.captured_queries) == 1


def test_behind_a_load_balancer_junk_tokens_count_under_the_forwarded_client(settings):
    # Given one trusted proxy and a budget of 2 writes
    settings.TRUSTED_PROXY_HOPS = 1
    _writes_budget(2)
    client = APIClient()

    def register(username: str, forwarded_for: str) -> int:
        return client.post(
            "/api/v1/auth/register/",
            {"username": username, "password": PASSWORD},
            format="json",
            REMOTE_ADDR="10.0.0.1",
            HTTP_X_FORWARDED_FOR=forwarded_for,
            HTTP_AUTHORIZATION=f"Token {secrets.token_hex(20)}",
        ).status_code

    # When one client sends junk tokens, claiming other addresses further left
    statuses = [
        register("lb1", "203.0.113.5"),
        register("lb2", "1.2.3.4, 203.0.113.5"),
        register("lb3", "5.6.7.8, 203.0.113.5"),
    ]
    # Then it is the one client the balancer saw, whatever it claims or sends
    assert statuses == [201, 201, 429]
    # ... and another client behind the same balancer has its own budget
    assert register("lb4", "198.51.100.7") == 201
    assert User.objects.count() == 3


def test_checkouts_the_serializer_refuses_still_count_against_the_writes_budget(limiter):
    # Given a buyer allowed one write (an API checkout leaves its limits to the view)
    _writes_budget(1)
    user = UserFactory()
    token = Token.objects.create(user=user).key

    def too_long_sku():  # passes the early hook's shape check, refused by the serializer
        return APIClient().post(
            "/api/v1/orders/",
            {"items": [{"sku": "X" * 65, "quantity": 1}]},
            format="json",
            HTTP_AUTHORIZATION=f"Token {token}",
            HTTP_IDEMPOTENCY_KEY=new_key(),
        )

    # When they send two checkouts the serializer refuses
    first, second = too_long_sku(), too_long_sku()

    # Then the first is the 400, and the second is over the budget: refusals are not free
    assert first.status_code == 400
    assert second.status_code == 429
    assert second.json()["layer"] == "user_writes"
    assert _orders_written() == 0
