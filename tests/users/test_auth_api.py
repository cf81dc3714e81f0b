from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.factories.users import UserFactory

User = get_user_model()


@pytest.mark.django_db
def test_register_creates_the_account_and_returns_a_working_token(client):
    response = client.post(
        "/api/v1/auth/register/",
        {"username": "alice", "password": "a-long-secret-9", "email": "alice@example.com"},
        content_type="application/json",
    )
    assert response.status_code == 201
    body = response.json()
    assert body["username"] == "alice"
    assert Token.objects.get(user_id=body["id"]).key == body["token"]
    # The token authenticates API calls
    assert (
        client.get("/api/v1/products/", HTTP_AUTHORIZATION=f"Token {body['token']}").status_code
        == 200
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "bob", "password": "password123"}, "password"),
        ({"username": "", "password": "a-long-secret-9"}, "username"),
        ({"username": "bad name!", "password": "a-long-secret-9"}, "username"),
        ({"username": "bob", "password": "a-long-secret-9", "email": "not-an-email"}, "email"),
        ({"password": "a-long-secret-9"}, "username"),
    ],
)
def test_invalid_registration_is_a_field_error_and_writes_nothing(client, payload, field):
    response = client.post("/api/v1/auth/register/", payload, content_type="application/json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert field in body["fields"]
    assert not User.objects.exists()
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_a_taken_username_is_refused_case_insensitively(client):
    UserFactory(username="Carol")
    response = client.post(
        "/api/v1/auth/register/",
        {"username": "carol", "password": "a-long-secret-9"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["fields"]["username"] == ["A user with that username already exists."]
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_token_for_good_credentials_and_a_clear_error_for_bad_ones(client):
    UserFactory(username="dave", password="correct-horse-battery")
    ok = client.post(
        "/api/v1/auth/token/",
        {"username": "dave", "password": "correct-horse-battery"},
        content_type="application/json",
    )
    assert ok.status_code == 200
    assert Token.objects.get(user__username="dave").key == ok.json()["token"]
    # Asking again returns the same token
    again = client.post(
        "/api/v1/auth/token/",
        {"username": "dave", "password": "correct-horse-battery"},
        content_type="application/json",
    )
    assert again.json()["token"] == ok.json()["token"]

    bad = client.post(
        "/api/v1/auth/token/",
        {"username": "dave", "password": "wrong"},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert bad.json() == {
        "code": "invalid_credentials",
        "detail": "Unable to log in with the provided credentials.",
    }


@pytest.mark.django_db
def test_malformed_json_is_a_clear_400(client):
    response = client.post("/api/v1/auth/token/", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


@pytest.mark.django_db
def test_a_bad_token_is_401_in_the_error_format(client):
    response = client.get("/api/v1/products/", HTTP_AUTHORIZATION="Token nope")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
