from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from tests.factories.users import UserFactory

User = get_user_model()


@pytest.mark.django_db
def test_register_logs_the_buyer_in(client):
    response = client.post(
        "/accounts/register/",
        {
            "username": "erin",
            "email": "erin@example.com",
            "password": "a-long-secret-9",
            "password_again": "a-long-secret-9",
        },
    )
    assert response.status_code == 302
    assert User.objects.filter(username="erin").exists()
    home = client.get("/")
    assert "erin" in home.content.decode()


@pytest.mark.django_db
def test_register_shows_errors_and_writes_nothing(client):
    response = client.post(
        "/accounts/register/",
        {"username": "erin", "password": "a-long-secret-9", "password_again": "different-9"},
    )
    assert response.status_code == 200
    assert "The two passwords differ." in response.content.decode()
    assert not User.objects.exists()


@pytest.mark.django_db
def test_login_and_logout(client):
    UserFactory(username="frank", password="correct-horse-battery")
    assert client.get("/accounts/login/").status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "frank", "password": "correct-horse-battery"}
    )
    assert response.status_code == 302
    assert client.session.get("_auth_user_id")

    assert client.post("/accounts/logout/").status_code == 302
    assert not client.session.get("_auth_user_id")


@pytest.mark.django_db
def test_wrong_password_stays_on_the_login_page(client):
    UserFactory(username="grace", password="correct-horse-battery")
    response = client.post("/accounts/login/", {"username": "grace", "password": "nope"})
    assert response.status_code == 200
    assert not client.session.get("_auth_user_id")
