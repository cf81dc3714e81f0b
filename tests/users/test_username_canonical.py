"""One username per canonical form (strip, NFKC, case-fold): registration (API, storefront,
admin) refuses a twin, the database refuses one that slips past the check in a race, and a
login finds the account by any spelling of its name."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import UserManager
from django.db import IntegrityError, connections, transaction
from rest_framework.authtoken.models import Token

from apps.users import admin as users_admin
from apps.users.exceptions import RegistrationInvalid
from apps.users.selectors import username_taken
from apps.users.services import user_register
from shop.authentication import username_canonical
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold

User = get_user_model()
PASSWORD = "a-long-secret-9"
TAKEN = ["A user with that username already exists."]


def test_the_canonical_form_trims_normalises_and_folds_case():
    assert username_canonical("  Ｂｕｙｅｒ\t") == "buyer"
    assert username_canonical("BUYER") == username_canonical("buyer") == "buyer"
    assert username_canonical("Straße") == username_canonical("STRASSE")
    assert username_canonical("") == ""


@pytest.mark.django_db
@pytest.mark.parametrize("twin", ["Ｂｕｙｅｒ", "BUYER", " Buyer ", "ｂｕｙｅｒ"])
def test_a_width_or_case_twin_is_refused_by_the_api(client, twin):
    UserFactory(username="buyer")
    response = client.post(
        "/api/v1/auth/register/",
        {"username": twin, "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert response.json()["fields"]["username"] == TAKEN
    assert User.objects.count() == 1
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_a_registered_name_is_stored_trimmed_and_normalised(client):
    response = client.post(
        "/api/v1/auth/register/",
        {"username": " Ｍａｒｉｅ ", "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response.json()["username"] == "Marie"
    assert User.objects.get().username == "Marie"


@pytest.mark.django_db
def test_a_twin_is_refused_by_the_storefront_form(client):
    UserFactory(username="buyer")
    response = client.post(
        "/accounts/register/",
        {"username": "Ｂｕｙｅｒ", "password": PASSWORD, "password_again": PASSWORD},
    )
    assert response.status_code == 200
    assert TAKEN[0] in response.content.decode()
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_the_database_refuses_a_twin_that_skips_every_check():
    UserFactory(username="buyer")
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(username="BUYER", password=PASSWORD)
    with pytest.raises(IntegrityError), transaction.atomic():
        User.objects.create_user(username="Ｂｕｙｅｒ", password=PASSWORD)  # NFKC: "Buyer"
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_a_twin_that_reaches_the_insert_is_a_field_error_not_a_500(monkeypatch):
    # Given the check has passed (as for the loser of a race) when the insert runs
    UserFactory(username="buyer")
    monkeypatch.setattr("apps.users.services.username_taken", lambda **kw: False)
    # When the twin is inserted, the unique index refuses it: the usual 400 field error
    with pytest.raises(RegistrationInvalid) as refused:
        user_register(username="BUYER", password=PASSWORD)
    assert refused.value.extra["fields"]["username"] == TAKEN
    monkeypatch.undo()
    assert User.objects.count() == 1
    assert not Token.objects.exists()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_two_concurrent_registrations_of_twins_make_one_user(monkeypatch):
    # Given two registrations of case/width twins that have both passed the uniqueness check
    # (each waits for the other right before its insert: the race's worst interleaving)
    both_checked = threading.Barrier(2, timeout=30)
    create_user = UserManager.create_user

    def create_after_both_checked(self, *args, **kwargs):
        both_checked.wait()
        return create_user(self, *args, **kwargs)

    monkeypatch.setattr(UserManager, "create_user", create_after_both_checked)

    def register(name: str) -> str:
        try:
            user_register(username=name, password=PASSWORD)
            return "created"
        except RegistrationInvalid as exc:
            assert exc.extra["fields"]["username"] == TAKEN
            return "taken"
        finally:
            connections.close_all()

    # When both insert at once
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = sorted(pool.map(register, ["buyer", "Ｂｕｙｅｒ"]))
    # Then exactly one account exists, the other got the usual field error
    assert outcomes == ["created", "taken"]
    assert User.objects.count() == 1
    assert Token.objects.count() == 1
    assert_invariants_hold()


@pytest.mark.django_db
def test_the_admin_add_form_refuses_a_twin_with_a_form_error(admin_client):
    UserFactory(username="buyer")
    before = User.objects.count()
    response = admin_client.post(
        "/admin/auth/user/add/",
        {
            "username": "Ｂｕｙｅｒ",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "usable_password": "true",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["username"] == TAKEN
    assert User.objects.count() == before


@pytest.mark.django_db
def test_a_twin_saved_between_the_admin_forms_check_and_its_insert_is_a_form_error(
    admin_client, monkeypatch
):
    # Given the twin arrives just after the add form's check (the first check sees nothing)
    UserFactory(username="buyer")
    checks = []

    def taken_after_the_first_check(**kwargs):
        checks.append(kwargs)
        return len(checks) > 1 and username_taken(**kwargs)

    monkeypatch.setattr(users_admin, "username_taken", taken_after_the_first_check)
    before = User.objects.count()
    # When the insert meets the unique index
    response = admin_client.post(
        "/admin/auth/user/add/",
        {"username": "BUYER", "password1": PASSWORD, "password2": PASSWORD,
         "usable_password": "true"},
    )  # fmt: skip
    # Then the operator sees the field error, not a 500, and nothing was written
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["username"] == TAKEN
    assert len(checks) == 2
    assert User.objects.count() == before


@pytest.mark.django_db
def test_the_admin_change_form_refuses_renaming_to_a_twin_with_a_form_error(admin_client):
    UserFactory(username="buyer")
    other = UserFactory(username="someone")
    response = admin_client.post(
        f"/admin/auth/user/{other.pk}/change/",
        {
            "username": "ＢＵＹＥＲ",
            "email": other.email,
            "is_active": "on",
            "date_joined_0": "2024-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["username"] == TAKEN
    other.refresh_from_db()
    assert other.username == "someone"
    # ... while keeping one's own name in another case is no twin
    renamed = admin_client.post(
        f"/admin/auth/user/{other.pk}/change/",
        {
            "username": "SomeOne",
            "email": other.email,
            "is_active": "on",
            "date_joined_0": "2024-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert renamed.status_code == 302
    other.refresh_from_db()
    assert other.username == "SomeOne"


@pytest.mark.django_db
@pytest.mark.parametrize("spelling", ["BUYER", "Ｂｕｙｅｒ", " buyer ", "buyer"])
def test_any_spelling_of_the_name_logs_in_through_the_api(client, spelling):
    user = UserFactory(username="buyer", password=PASSWORD)
    response = client.post(
        "/api/v1/auth/token/",
        {"username": spelling, "password": PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert Token.objects.get(user=user).key == response.json()["token"]


@pytest.mark.django_db
@pytest.mark.parametrize("spelling", ["BUYER", "Ｂｕｙｅｒ", " buyer "])
def test_any_spelling_of_the_name_logs_in_on_the_storefront(client, spelling):
    user = UserFactory(username="buyer", password=PASSWORD)
    response = client.post("/accounts/login/", {"username": spelling, "password": PASSWORD})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)
    assert client.get("/").status_code == 200  # the session's backend is a configured one


@pytest.mark.django_db
def test_a_wrong_password_for_any_spelling_is_refused(client):
    UserFactory(username="buyer", password=PASSWORD)
    for spelling in ("BUYER", "Ｂｕｙｅｒ", "nobody"):
        response = client.post(
            "/api/v1/auth/token/",
            {"username": spelling, "password": "not-the-password"},
            content_type="application/json",
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_credentials"
    assert not Token.objects.exists()


@pytest.mark.django_db
def test_the_storefront_registration_logs_the_buyer_in_with_the_configured_backend(client):
    response = client.post(
        "/accounts/register/",
        {"username": "Ｎｅｗ", "password": PASSWORD, "password_again": PASSWORD},
    )
    assert response.status_code == 302
    home = client.get("/")
    assert home.wsgi_request.user.is_authenticated
    assert home.wsgi_request.user.username == "New"
