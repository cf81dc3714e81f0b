from __future__ import annotations

import pytest
from django.db import connections

from tests.shop.test_cache_redis_down import DEAD_REDIS


def test_healthz_answers_without_touching_any_dependency(client):
    # No django_db mark: any database access in this request would raise.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db(databases="__all__")
def test_readyz_checks_every_database_alias_the_cache_and_the_broker(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert set(checks) == {f"database:{alias}" for alias in settings.DATABASES} | {
        "cache",
        "broker",
    }
    assert all(result.startswith("ok") for result in checks.values())


@pytest.mark.django_db(databases="__all__")
def test_readyz_names_a_dead_cache(client, settings):
    settings.CACHES = DEAD_REDIS
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["cache"]
    assert body["code"] == "service_unavailable"
    assert response["Retry-After"]


@pytest.mark.django_db(databases="__all__")
def test_readyz_names_a_dead_broker(client, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["broker"]


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_readyz_names_a_dead_order_shard(client):
    shard = connections["orders_1"]
    port = shard.settings_dict["PORT"]
    shard.close()
    shard.settings_dict["PORT"] = 1  # nothing listens there: the shard's server is gone
    try:
        response = client.get("/readyz")
    finally:
        shard.close()
        shard.settings_dict["PORT"] = port
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["database:orders_1"]
    assert body["checks"]["database:orders_0"] == "ok"
    assert "database:orders_1" in body["detail"]
