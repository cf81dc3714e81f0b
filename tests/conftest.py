"""Suite-wide fixtures and the services gate.

Tests that need a real service carry a marker (needs_postgres, needs_redis, needs_broker).
Without the services profile they skip with the reason; with CI=true nothing may skip: the run
stops at once if the profile is not selected or a service does not answer.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.cache import cache

from apps.inventory.selectors import stock_snapshot_clear
from shop.cache import cache_health_reset, process_memos_forget
from shop.logs import log_context_clear
from shop.outbox import background
from shop.pagecache import page_cache_local_reset
from shop.ratelimit import ratelimit_local_reset
from shop.resilience import breakers_local_reset
from shop.runtime import runtime_defaults
from tests.shop.resilience_helpers import DEAD_REDIS, LOCAL_MEMORY

# Fixtures shared across test packages: the alert sink (operators' mail, a webhook receiver).
pytest_plugins = ["tests.alerting"]

CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
HOW_TO = "run `make test-services` (local PostgreSQL, Redis, RabbitMQ) to include it"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _postgres_everywhere() -> bool:
    return all(
        db["ENGINE"] == "django.db.backends.postgresql" for db in settings.DATABASES.values()
    )


def _services() -> dict[str, tuple[bool, str]]:
    """marker → (available, why not)."""
    postgres = _postgres_everywhere()
    redis = bool(settings.REDIS_URL)
    broker = not settings.CELERY_TASK_ALWAYS_EAGER
    return {
        "needs_postgres": (
            postgres,
            "needs PostgreSQL for every alias (DATABASE_URL, ORDER_SHARD_URLS)",
        ),
        "needs_redis": (redis, "needs Redis (REDIS_URL)"),
        "needs_broker": (broker, "needs RabbitMQ (CELERY_BROKER_URL)"),
    }


def pytest_configure(config: pytest.Config) -> None:
    if not CI:
        return
    missing = [why for available, why in _services().values() if not available]
    if missing:
        raise pytest.UsageError(
            "CI=true but the services profile is not selected: " + "; ".join(missing)
        )
    unreachable = []
    for alias, db in settings.DATABASES.items():
        if not _reachable(f"postgres://{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}", 5432):
            unreachable.append(f"PostgreSQL for {alias}")
    if not _reachable(settings.REDIS_URL, 6379):
        unreachable.append("Redis")
    if not _reachable(settings.CELERY_BROKER_URL, 5672):
        unreachable.append("RabbitMQ")
    if unreachable:
        raise pytest.UsageError(
            "CI=true but these services do not answer: " + ", ".join(unreachable)
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    services = _services()
    for item in items:
        for marker, (available, why) in services.items():
            if item.get_closest_marker(marker) and not available:
                item.add_marker(pytest.mark.skip(reason=f"{why}; {HOW_TO}"))


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Every test starts with an empty cache and a cache this process believes is up."""
    cache.clear()
    page_cache_local_reset()
    process_memos_forget()
    stock_snapshot_clear()
    cache_health_reset()
    runtime_defaults()
    ratelimit_local_reset()
    breakers_local_reset()
    yield
    cache_health_reset()


@pytest.fixture(autouse=True)
def _outbox_publisher_settled() -> None:
    """A test's committed outbox messages are published (or left to the relay) before the next
    test starts, so no late publish lands in another test's queues."""
    yield
    background.drain()


@pytest.fixture(autouse=True, scope="session")
def _outbox_publisher_connections_closed() -> None:
    """The background publisher's own database connections are closed before the test
    databases are dropped."""
    yield
    background.close_connections()


@pytest.fixture(autouse=True)
def _fresh_log_context() -> None:
    """Ids bound by one test (an order placed outside a request) must not label the next."""
    log_context_clear()
    yield
    log_context_clear()


@pytest.fixture(
    params=[pytest.param("redis", marks=pytest.mark.needs_redis), "local", "redis-down"]
)
def limiter(request: pytest.FixtureRequest, settings: Any) -> str:
    """Where per-client and login rate-limit windows live, a test run for each: Redis (shared by
    every process), this process's local-memory cache (embedded profile), or nowhere shared
    (Redis unreachable: each layer's per-process fallback)."""
    if request.param == "local":
        settings.CACHES = LOCAL_MEMORY
        cache.clear()  # this store outlives a test; no window of an earlier one may remain
    elif request.param == "redis-down":
        settings.CACHES = DEAD_REDIS
    return request.param
