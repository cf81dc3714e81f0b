"""Prometheus metrics of the kernel, and the /metrics endpoint.

With PROMETHEUS_MULTIPROC_DIR set (gunicorn with several workers, Celery prefork), every process
writes its samples there and a scrape aggregates them.
"""

from __future__ import annotations

import hmac
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    multiprocess,
)

CACHE_LOOKUPS = Counter(
    "shop_cache_lookups_total",
    "Cache-aside lookups by outcome (hit, miss, bypass = cache skipped after an error)",
    ["result"],
)
CACHE_ERRORS = Counter(
    "shop_cache_errors_total",
    "Cache backend failures (Redis unreachable or too slow); reads fell back to the database",
    ["operation"],
)
CACHE_LOADS = Counter(
    "shop_cache_loads_total", "Database loads caused by cache misses", ["namespace"]
)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _authorized(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(header, f"Bearer {token}")


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        return HttpResponse("metrics are for staff or a bearer token\n", status=403)
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


REVIEW_ITEMS_FILED = Counter(
    "shop_manual_review_items_filed_total", "Items filed for operators to review", ["kind"]
)
DEAD_LETTERS = Counter(
    "shop_dead_letters_total", "Tasks that failed and went to a dead-letter queue", ["queue"]
)
ALERTS = Counter(
    "shop_alerts_total",
    "Alerts raised, by whether this occurrence notified (true), was de-duplicated (false) or "
    "could not be recorded (error)",
    ["kind", "notified"],
)
ALERT_DELIVERIES = Counter(
    "shop_alert_deliveries_total",
    "Alert notifications handed to each target: sent, skipped (not configured) or failed",
    ["target", "outcome"],
)
INVARIANT_VIOLATIONS = Gauge(
    "shop_invariant_violations",
    "Violations found by the latest periodic invariant audit, per check (0 = it holds)",
    ["check"],
    multiprocess_mode="mostrecent",
)
