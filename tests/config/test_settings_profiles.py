"""The profile is chosen by environment variables alone; production refuses unsafe defaults."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES_ENV = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/shop_x",
    "ORDER_SHARD_URLS": (
        "postgres://postgres@127.0.0.1:5432/shop_x_0,postgres://postgres@127.0.0.1:5432/shop_x_1"
    ),
    "REDIS_URL": "redis://127.0.0.1:6379/3",
    "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
}
PRODUCTION_ENV = {
    **SERVICES_ENV,
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(60),
    "ALLOWED_HOSTS": "shop.example.com",
}
DUMP = """
import json, django
from django.conf import settings as s
django.setup()
print(json.dumps({
    "engines": {a: d["ENGINE"].rsplit(".", 1)[-1] for a, d in s.DATABASES.items()},
    "names": {a: str(d["NAME"]) for a, d in s.DATABASES.items()},
    "cache": s.CACHES["default"]["BACKEND"],
    "eager": s.CELERY_TASK_ALWAYS_EAGER,
    "broker": s.CELERY_BROKER_URL,
    "shard_map": {str(k): v for k, v in s.ORDER_SHARD_MAP.items()},
    "logical": s.LOGICAL_SHARD_COUNT,
    "services": s.SERVICES_PROFILE,
    "debug": s.DEBUG,
}))
"""


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    clean.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    clean.update(env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def _settings(env: dict[str, str]) -> dict:
    result = _run(env, "-c", DUMP)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_variables_give_the_embedded_default(tmp_path):
    values = _settings({"SHOP_VAR_DIR": str(tmp_path)})
    assert values["engines"] == {"default": "sqlite3", "orders_0": "sqlite3", "orders_1": "sqlite3"}
    assert values["names"]["default"] == str(tmp_path / "default.sqlite3")
    assert values["names"]["orders_1"] == str(tmp_path / "orders_1.sqlite3")
    assert values["cache"].endswith("LocMemCache")
    assert values["eager"] is True
    assert values["services"] is False
    assert set(values["shard_map"].values()) == {"orders_0", "orders_1"}


def test_services_variables_give_postgres_per_shard_redis_and_rabbitmq():
    values = _settings(SERVICES_ENV)
    assert values["engines"] == {
        "default": "postgresql",
        "orders_0": "postgresql",
        "orders_1": "postgresql",
    }
    assert values["names"] == {"default": "shop_x", "orders_0": "shop_x_0", "orders_1": "shop_x_1"}
    assert values["cache"] == "django_redis.cache.RedisCache"
    assert values["eager"] is False
    assert values["broker"].startswith("amqp://")
    assert values["services"] is True
    # 64 logical shards in two contiguous ranges
    assert values["logical"] == 64
    assert [values["shard_map"][str(i)] for i in (0, 31, 32, 63)] == [
        "orders_0",
        "orders_0",
        "orders_1",
        "orders_1",
    ]


def test_an_explicit_shard_map_and_count_are_settings():
    values = _settings(
        {**SERVICES_ENV, "LOGICAL_SHARD_COUNT": "8", "ORDER_SHARD_MAP": "0-5=orders_1,6-7=orders_0"}
    )
    assert values["shard_map"] == {str(i): "orders_1" if i < 6 else "orders_0" for i in range(8)}


def test_an_incomplete_shard_map_refuses_to_start():
    result = _run({**SERVICES_ENV, "ORDER_SHARD_MAP": "0-31=orders_0"}, "-c", DUMP)
    assert result.returncode != 0
    assert "unmapped" in result.stderr


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"DEBUG": "true"}, "DEBUG must be off"),
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        (
            {"SECRET_KEY": "django-insecure-shop-development-key-never-use-in-production"},
            "SECRET_KEY",
        ),
        ({"SECRET_KEY": "short"}, "at least 50 characters"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS"),
        ({"DATABASE_URL": ""}, "DATABASE_URL must be set"),
        ({"REDIS_URL": ""}, "REDIS_URL must be set"),
        ({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL must be set"),
    ],
)
def test_production_refuses_to_start_on_unsafe_settings(override, complaint):
    result = _run({**PRODUCTION_ENV, **override}, "manage.py", "check")
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr
    assert complaint in result.stderr


def test_production_deploy_check_is_clean():
    result = _run(PRODUCTION_ENV, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
