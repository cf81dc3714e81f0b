"""The per-username login window keys on the canonical username (strip, NFKC, case-fold) —
the form the login itself looks the user up by — on every login route: the API token endpoint,
the storefront login form and the admin login. A body the throttle cannot read is "no
username", never a 500."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, RequestFactory
from django.urls import resolve
from rest_framework.authtoken.models import Token

from shop.models import RateLimitRule
from shop.runtime import runtime_refresh
from shop.throttle import ThrottleMiddleware
from tests.factories.users import UserFactory

pytestmark = pytest.mark.django_db
User = get_user_model()
PASSWORD = "correct-horse-battery"
# One account, written four ways: each is trimmed, NFKC-normalised or case-folded to "buyer".
VARIANTS = ["Ｂｕｙｅｒ", " " * 7 + "buyer", "\tbuyer", "BUYER"]
DEEP = "[" * 1000 + "]" * 1000


def _login_budget(n: int) -> None:
    RateLimitRule.objects.update_or_create(
        name="login", defaults={"rate": n, "period_seconds": 600, "burst": n}
    )
    runtime_refresh()


def _api_login(client: Client, username: str, password: str, addr: str):
    return client.post(
        "/api/v1/auth/token/",
        {"username": username, "password": password},
        content_type="application/json",
        REMOTE_ADDR=addr,
    )


def _storefront_login(client: Client, username: str, password: str, addr: str):
    return client.post(
        "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=addr
    )


def _admin_login(client: Client, username: str, password: str, addr: str):
    return client.post(
        "/admin/login/",
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=addr,
    )


ROUTES = {"api-token": _api_login, "storefront": _storefront_login, "admin": _admin_login}


@pytest.mark.parametrize("route", ROUTES)
def test_every_spelling_of_a_username_counts_against_one_bucket(client, route, limiter):
    # Given a window of 3 attempts per username and the buyer "buyer"
    _login_budget(3)
    UserFactory(username="buyer", password=PASSWORD, is_staff=True)
    login = ROUTES[route]
    # When an attacker guesses from a fresh address each time, spelling the name differently
    guesses = [
        login(client, name, f"guess-{i}", f"203.0.113.{i + 1}").status_code
        for i, name in enumerate(VARIANTS)
    ]
    # Then the fourth guess is refused: all four were one username
    assert 429 not in guesses[:3]
    assert guesses[3] == 429
    # ... even with the right password, from yet another address, in the plain spelling
    assert login(client, "buyer", PASSWORD, "203.0.113.99").status_code == 429
    assert not Token.objects.exists()
    assert not client.session.get("_auth_user_id")


def test_the_three_login_routes_share_the_username_bucket(client, limiter):
    _login_budget(3)
    UserFactory(username="buyer", password=PASSWORD, is_staff=True)
    assert _api_login(client, "Ｂｕｙｅｒ", "guess", "192.0.2.1").status_code == 400
    assert _storefront_login(client, "  BUYER", "guess", "192.0.2.2").status_code == 200
    assert _admin_login(client, "\tbuyer ", "guess", "192.0.2.3").status_code == 200
    assert _api_login(client, "buyer", PASSWORD, "192.0.2.4").status_code == 429
    assert not Token.objects.exists()


def test_json_nested_a_thousand_deep_on_the_storefront_login_is_no_username_not_a_500(client):
    # Given the per-username window
    _login_budget(3)
    # When the login form is posted a JSON body nested 1,000 deep
    response = client.post("/accounts/login/", DEEP, content_type="application/json")
    # Then the throttle treats it as "no username" and the form answers (not a 500)
    assert response.status_code == 200
    assert not client.session.get("_auth_user_id")


def _throttle(body: str, addr: str):
    """The throttle's answer for a POST to the API token endpoint, before the view runs."""
    request = RequestFactory().post(
        "/api/v1/auth/token/", body, "application/json", REMOTE_ADDR=addr
    )
    request.resolver_match = resolve("/api/v1/auth/token/")
    return ThrottleMiddleware(lambda r: None).process_view(request, lambda r: None, (), {})


def test_bodies_the_throttle_cannot_read_share_one_bucket_and_never_raise():
    # Given a window of 2 per username
    _login_budget(2)
    # When bodies it cannot read arrive from fresh addresses: nested 1,000 deep, and a
    # well-formed login padded deeper than the bounded parser reads
    padded = '{"username": "buyer", "password": "guess", "pad": ' + "[" * 40 + "]" * 40 + "}"
    unreadable = [DEEP, '{"username": ' + DEEP + ', "password": "x"}', padded]
    answers = [_throttle(body, f"192.0.2.{i + 1}") for i, body in enumerate(unreadable)]
    # Then none raises; they count against one shared bucket, so padding a body is no way
    # around the per-username window (a view that could still read it checks no more
    # passwords than one name's budget)
    assert answers[:2] == [None, None]
    assert answers[2] is not None and answers[2].status_code == 429
    # ... and a readable name has its own bucket
    assert _throttle('{"username": "buyer", "password": "x"}', "192.0.2.9") is None


def test_json_nested_a_thousand_deep_on_the_token_endpoint_is_400_and_creates_nothing(client):
    UserFactory(username="buyer", password=PASSWORD)
    response = client.post("/api/v1/auth/token/", DEEP, content_type="application/json")
    assert response.status_code == 400
    assert not Token.objects.exists()
