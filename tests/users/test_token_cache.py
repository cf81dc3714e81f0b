"""A process remembers a token's user for AUTH_TOKEN_CACHE_TTL seconds, and no longer."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from shop.authentication import token_cache

URL = "/api/v1/orders/"  # any route that needs a signed-in buyer (it reads the order shards)
pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def token(db) -> Token:
    user = get_user_model().objects.create_user("tina", password="pw-123456789")
    return Token.objects.create(user=user)


@pytest.fixture(autouse=True)
def _empty_cache():
    token_cache.clear()
    yield
    token_cache.clear()


def _get(token_key: str) -> int:
    return APIClient().get(URL, HTTP_AUTHORIZATION=f"Token {token_key}").status_code


def _token_queries(token_key: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert _get(token_key) == 200
    return sum('"authtoken_token"' in q["sql"] for q in queries.captured_queries)


def test_a_known_token_is_not_looked_up_again_within_the_ttl(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 60
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 0


def test_with_ttl_zero_every_request_looks_the_token_up(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 1


def test_a_deleted_token_is_refused_once_the_ttl_has_passed(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0.3
    key = token.key
    assert _get(key) == 200
    token.delete()
    assert _get(key) == 200  # still trusted by this process, as documented
    time.sleep(0.35)
    assert _get(key) == 401


def test_a_deactivated_user_is_refused_once_the_ttl_has_passed(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0.3
    assert _get(token.key) == 200
    get_user_model().objects.filter(pk=token.user_id).update(is_active=False)
    time.sleep(0.35)
    assert _get(token.key) == 401


def test_an_unknown_token_is_refused_every_time(settings, db):
    settings.AUTH_TOKEN_CACHE_TTL = 60
    assert _get("f" * 40) == 401
    assert _get("f" * 40) == 401
