from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from apps.catalog.models import Category, Product, Sku
from apps.inventory.models import Stock


def _names() -> list[str]:
    return list(Product.objects.order_by("slug").values_list("name", flat=True))


@pytest.mark.django_db
def test_seed_builds_a_stocked_catalog_and_prints_logins(capsys):
    call_command("seed_demo", "--products", "60", "--users", "3")
    out = capsys.readouterr().out

    assert Category.objects.filter(parent=None).count() == 5
    assert Category.objects.count() == 20
    assert Product.objects.count() == 60
    assert Stock.objects.count() == Sku.objects.count() >= 60
    assert all(s.received == s.available for s in Stock.objects.all())
    assert "admin" in out and "buyer" in out and "shopdemo" in out
    admin = authenticate(username="admin", password="shopdemo")
    assert admin is not None and admin.is_staff and admin.is_superuser
    assert authenticate(username="buyer3", password="shopdemo") is not None


@pytest.mark.django_db
def test_seed_is_deterministic_and_idempotent(capsys):
    call_command("seed_demo", "--products", "40", "--seed", "7")
    reference = _names()
    Stock.objects.all().delete()
    Product.objects.all().delete()

    call_command("seed_demo", "--products", "15", "--seed", "7")
    call_command("seed_demo", "--products", "40", "--seed", "7")
    call_command("seed_demo", "--products", "40", "--seed", "7")

    assert _names() == reference
    assert Product.objects.count() == 40


@pytest.mark.django_db
def test_existing_passwords_are_kept_unless_one_is_given(capsys):
    call_command("seed_demo", "--products", "1")
    call_command("seed_demo", "--products", "1")
    assert "unchanged" in capsys.readouterr().out
    call_command("seed_demo", "--products", "1", "--password", "another-pass")
    assert authenticate(username="admin", password="another-pass") is not None
