"""Prometheus metrics of the kernel, the live collectors apps register, and /metrics.

Two kinds of metric:

* **Event metrics** (counters, histograms) are incremented where the event happens, in whichever
  process it happens. With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn with several workers,
  Celery prefork) every process writes its samples to files there and a scrape of any web
  worker aggregates all of them — web workers and Celery processes alike, as long as they share
  the directory (one per host; emptied when the host's shop processes are (re)deployed).
* **Live metrics** (breaker states, queue depths, backlogs, units left) describe shared state
  that already lives in Redis, the broker or the database. They are read at scrape time by
  collectors that apps register with :func:`live_collector`, so every process reports the same
  truth and nothing has to be kept in sync. A scrape caches them for ``METRICS_LIVE_TTL``
  seconds, so several Prometheus servers cannot turn scrapes into load.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)
# The *_created series double every counter's lines and no dashboard of ours uses them.
disable_created_metrics()

# Latency buckets (seconds) for requests and outbound calls: from a cached page (~2 ms) to a
# card payment through a slow bank (seconds).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

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
HTTP_REQUESTS = Counter(
    "shop_http_requests_total", "HTTP requests by route and status", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "shop_http_request_duration_seconds",
    "Time from the first middleware to the response, by route",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
TASKS = Counter(
    "shop_tasks_total",
    "Celery tasks run, by outcome (success, retry, failure)",
    ["task", "outcome"],
)
TASK_LATENCY = Histogram(
    "shop_task_duration_seconds", "Celery task run time", ["task"], buckets=LATENCY_BUCKETS
)
REVIEW_ITEMS_FILED = Counter(
    "shop_manual_review_items_filed_total", "Items filed for operators to review", ["kind"]
)
DEAD_LETTERS = Counter(
    "shop_dead_letters_total", "Tasks that failed and went to a dead-letter queue", ["queue"]
)
SHARD_LOOP_ERRORS = Counter(
    "shop_shard_loop_errors_total",
    "Shards a background loop skipped because their database failed (the others were done)",
    ["loop", "shard"],
)
LIVE_COLLECTOR_ERRORS = Counter(
    "shop_live_collector_errors_total",
    "Live collectors that failed during a scrape (their metrics are missing from it)",
    ["collector"],
)


# --- Live collectors --------------------------------------------------------------------------

LiveCollect = Callable[[], Iterable[Metric]]
_live: dict[str, LiveCollect] = {}


def live_collector(name: str) -> Callable[[LiveCollect], LiveCollect]:
    """Register ``fn`` (returning metric families) to be read at every scrape. A collector that
    raises is logged and counted; the others still report."""

    def register(fn: LiveCollect) -> LiveCollect:
        _live[name] = fn
        return fn

    return register


def gauge(name: str, documentation: str, labels: list[str], values: dict) -> GaugeMetricFamily:
    """A gauge family from ``{label values tuple: value}``."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


class _LiveCollector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._at > settings.METRICS_LIVE_TTL:
                self._families = list(self._read())
                self._at = time.monotonic()
            return list(self._families)

    def _read(self) -> Iterable[Metric]:
        for name, fn in sorted(_live.items()):
            try:
                families = list(fn())
            except Exception:
                logger.exception("live metrics collector %s failed", name)
                LIVE_COLLECTOR_ERRORS.labels(name).inc()
                continue
            yield from families

    def reset(self) -> None:
        with self._lock:
            self._at = float("-inf")


live_metrics = _LiveCollector()
_LIVE_REGISTRY = CollectorRegistry(auto_describe=False)
_LIVE_REGISTRY.register(live_metrics)


def queue_depths(queues: Iterable[str]) -> dict[str, int]:
    """Messages ready in each broker queue (passive declare: a missing queue is skipped)."""
    from kombu import Connection

    depths: dict[str, int] = {}
    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=settings.CELERY_BROKER_CONNECTION_TIMEOUT
    ) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                _, count, _ = channel.queue_declare(queue=queue, passive=True)
            except connection.channel_errors:
                continue  # not declared yet: nobody has used it
            finally:
                if channel.is_open:
                    channel.close()
            depths[queue] = count
    return depths


def queue_depths_now() -> dict[str, int]:
    """Messages waiting in each of the worker's queues; none without a broker (embedded
    profile: tasks run in-process)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {}
    return queue_depths(settings.CELERY_WORKER_QUEUES)


@live_collector("queues")
def _queues() -> Iterable[Metric]:
    depths = queue_depths_now()
    return [
        gauge(
            "shop_queue_depth",
            "Messages waiting in each broker queue (the dead-letter queue included)",
            ["queue"],
            {(queue,): count for queue, count in depths.items()},
        )
    ]


@live_collector("manual_review")
def _manual_review() -> Iterable[Metric]:
    from shop.review import review_waiting

    return [
        gauge(
            "shop_manual_review_open",
            "Manual-review items waiting for an operator, by kind",
            ["kind"],
            {(row["kind"],): row["n"] for row in review_waiting()},
        )
    ]


# --- The endpoint -------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape() -> bytes:
    """The exposition text: every process's event metrics, then the live ones."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_LIVE_REGISTRY)


def mark_process_dead(pid: int) -> None:
    """A worker process exited: drop its live-gauge files (its counters stay counted)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)


def _authorized(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.is_staff:
        return True
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    # As bytes: compare_digest refuses str with non-ASCII characters (a header may hold any).
    return bool(token) and hmac.compare_digest(
        header.encode("utf-8", "surrogatepass"), f"Bearer {token}".encode()
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        return HttpResponse("metrics are for staff or a bearer token\n", status=403)
    return HttpResponse(scrape(), content_type=CONTENT_TYPE_LATEST)


# --- HTTP requests ----------------------------------------------------------------------------

UNMATCHED = "unmatched"
STATIC_PREFIX = "/static/"


def _route(request: HttpRequest) -> str:
    """The route's name (bounded label values), never the raw path."""
    match = getattr(request, "resolver_match", None)
    if match is None and (named := getattr(request, "metrics_route", None)):
        return named  # answered by the page cache, which stored the route with the page
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return UNMATCHED
    return match.view_name or match.route or UNMATCHED


# (route, method, status) → the request counter's and latency histogram's children: labels()
# takes a lock and builds a key on every call; a hot refusal is cheap enough for that to show.
_http_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
HTTP_CHILDREN_MAX = 4096  # past it (odd methods from clients), labels() each time


def _http_observe(route: str, method: str, status: str, seconds: float) -> None:
    key = (route, method, status)
    children = _http_children.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(route, method, status), HTTP_LATENCY.labels(route, method))
        if len(_http_children) < HTTP_CHILDREN_MAX:
            _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


class MetricsMiddleware:
    """Counts every request by route and status and times it; first in the chain, so refusals
    answered by later middleware (page cache, rate limits) are counted too."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        if request.path_info.startswith(STATIC_PREFIX):
            return response
        _http_observe(_route(request), request.method, str(response.status_code),
                      time.perf_counter() - started)  # fmt: skip
        return response


# --- Celery tasks -----------------------------------------------------------------------------

_task_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _task_started[task_id] = time.perf_counter()


def task_finished(task_name: str, task_id: str, outcome: str) -> None:
    TASKS.labels(task_name, outcome).inc()
    started = _task_started.pop(task_id, None)
    if started is not None:
        TASK_LATENCY.labels(task_name).observe(time.perf_counter() - started)


# --- Alerts and audits (shop.alerts, shop.audit) ----------------------------------------------

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
