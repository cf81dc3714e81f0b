from __future__ import annotations

import itertools

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.catalog.models import Sku
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory

_keys = itertools.count(1)


def new_key() -> str:
    return f"key-{next(_keys)}"


def api_client(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def post_order(client: APIClient, items, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key or new_key()}
    return client.post("/api/v1/orders/", {"items": items}, format="json", **headers)


def assert_invariants_hold() -> None:
    """Every concurrency or failure test ends here (DESIGN.md §4)."""
    try:
        call_command("audit_invariants")
    except SystemExit as exc:  # the command exits 1 and has printed the violations
        raise AssertionError("audit_invariants found violations") from exc


@pytest.fixture
def sku(db) -> Sku:
    """A sellable SKU with 10 units, price 1000 EUR cents."""
    return product_with_skus(skus=1, stock=10).skus.get()


@pytest.fixture
def buyer(db):
    return UserFactory(username="buyer-a", email="buyer-a@example.com")
