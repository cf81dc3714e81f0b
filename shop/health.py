"""Liveness (/healthz) and readiness (/readyz) probes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connections
from django.http import HttpRequest, JsonResponse
from kombu import Connection
from kombu.exceptions import KombuError

from shop.cache import CACHE_BACKEND_ERRORS
from shop.sharding import all_database_aliases

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests. Touches no dependency."""
    return JsonResponse({"status": "ok"})


def _check_database(alias: str) -> str:
    connection = connections[alias]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        connection.close()  # reconnect next time instead of reusing a broken connection
        return f"error: {type(exc).__name__}: {exc}".strip()
    return "ok"


def _check_cache() -> str:
    key = f"readyz:{uuid.uuid4().hex}"
    try:
        cache.set(key, "1", 10)
        value = cache.get(key)
        cache.delete(key)
    except CACHE_BACKEND_ERRORS as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok" if value == "1" else "error: value written was not read back"


def _check_broker() -> str:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return "ok (no broker: tasks run eagerly)"
    try:
        with Connection(
            settings.CELERY_BROKER_URL, connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT
        ) as connection:
            connection.connect()
    except (KombuError, OSError) as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"


def readiness_checks() -> dict[str, Callable[[], str]]:
    checks: dict[str, Callable[[], str]] = {
        f"database:{alias}": (lambda alias=alias: _check_database(alias))
        for alias in all_database_aliases()
    }
    checks["cache"] = _check_cache
    checks["broker"] = _check_broker
    return checks


def readyz(request: HttpRequest) -> JsonResponse:
    """Every dependency answers: each database alias, the cache and the broker.

    503 names what failed, so a load balancer stops routing here and an operator sees why.
    """
    results = {name: check() for name, check in readiness_checks().items()}
    failed = [name for name, result in results.items() if not result.startswith("ok")]
    if failed:
        logger.warning("not ready: %s", ", ".join(failed))
        response = JsonResponse(
            {
                "status": "unavailable",
                "code": "service_unavailable",
                "detail": f"not ready: {', '.join(failed)}",
                "failed": failed,
                "checks": results,
            },
            status=503,
        )
        response["Retry-After"] = str(settings.SERVICE_UNAVAILABLE_RETRY_AFTER)
        return response
    return JsonResponse({"status": "ok", "checks": results})
