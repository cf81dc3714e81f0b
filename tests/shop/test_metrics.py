"""The /metrics endpoint and the kernel's metrics: who may scrape, requests by route and
status, rate-limit refusals per layer, live backlogs and queue depths, and a broken collector
that must not blank the scrape."""

from __future__ import annotations

import pytest
from kombu import Connection
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily

from shop import metrics
from shop.models import RateLimitRule
from shop.review import review_file
from shop.runtime import runtime_refresh
from tests.workers import purge_queues

pytestmark = pytest.mark.django_db(databases="__all__")


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_answer_staff_or_the_token_only(client, admin_client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    by_token = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert by_token.status_code == 200
    assert by_token["Content-Type"].startswith("text/plain")
    assert admin_client.get("/metrics").status_code == 200


def test_requests_are_counted_by_route_and_status_and_timed(client):
    ok = _value("shop_http_requests_total", route="api-category-list", method="GET", status="200")
    missing = _value("shop_http_requests_total", route="unmatched", method="GET", status="404")
    timed = _value(
        "shop_http_request_duration_seconds_count", route="api-category-list", method="GET"
    )

    client.get("/api/v1/categories/")
    client.get("/api/v1/categories/")
    client.get("/no/such/page/")

    assert (
        _value("shop_http_requests_total", route="api-category-list", method="GET", status="200")
        == ok + 2
    )
    assert _value("shop_http_requests_total", route="unmatched", method="GET", status="404") == (
        missing + 1
    )
    assert (
        _value("shop_http_request_duration_seconds_count", route="api-category-list", method="GET")
        == timed + 2
    )


def test_rate_limit_refusals_are_counted_per_layer(client):
    RateLimitRule.objects.update_or_create(
        name="endpoint", defaults={"rate": 2, "period_seconds": 60, "burst": 2}
    )
    runtime_refresh()
    before = _value("shop_rate_limited_total", layer="endpoint")
    refused = _value(
        "shop_http_requests_total", route="api-category-list", method="GET", status="429"
    )

    statuses = [client.get("/api/v1/categories/").status_code for _ in range(4)]

    assert statuses == [200, 200, 429, 429]
    assert _value("shop_rate_limited_total", layer="endpoint") == before + 2
    assert (
        _value("shop_http_requests_total", route="api-category-list", method="GET", status="429")
        == refused + 2
    )


def test_the_manual_review_backlog_is_read_live(admin_client):
    review_file(kind="order_processing", reference="o-1", summary="stuck")
    review_file(kind="order_processing", reference="o-2", summary="stuck")
    review_file(kind="reconciliation", reference="r-1", summary="differs")

    text = admin_client.get("/metrics").content.decode()

    assert 'shop_manual_review_open{kind="order_processing"} 2.0' in text
    assert 'shop_manual_review_open{kind="reconciliation"} 1.0' in text


def test_a_broken_live_collector_does_not_blank_the_scrape(admin_client):
    def broken():
        raise RuntimeError("the backlog table is gone")

    metrics.live_collector("broken-for-test")(broken)
    metrics.live_collector("fine-for-test")(
        lambda: [GaugeMetricFamily("shop_test_fine", "still here", value=7)]
    )
    errors = _value("shop_live_collector_errors_total", collector="broken-for-test")
    try:
        response = admin_client.get("/metrics")
    finally:
        metrics._live.pop("broken-for-test")
        metrics._live.pop("fine-for-test")
    assert response.status_code == 200
    assert "shop_test_fine 7.0" in response.content.decode()
    assert _value("shop_live_collector_errors_total", collector="broken-for-test") == errors + 1


@pytest.mark.needs_broker
def test_queue_depths_are_read_from_the_broker(admin_client, settings):
    purge_queues()
    with Connection(settings.CELERY_BROKER_URL) as connection:
        queue = connection.SimpleQueue("notifications")
        for n in range(3):
            queue.put({"n": n})
        queue.close()
    try:
        text = admin_client.get("/metrics").content.decode()
    finally:
        purge_queues()
    assert 'shop_queue_depth{queue="notifications"} 3.0' in text
    assert 'shop_queue_depth{queue="order.processing.dlq"}' in text


def test_every_metric_the_deploy_files_use_is_exported(admin_client):
    """deploy/grafana-dashboard.json and deploy/shop-alerts.yml name only metrics /metrics has."""
    import json
    import re
    from pathlib import Path

    deploy = Path(__file__).resolve().parents[2] / "deploy"
    dashboard = json.loads((deploy / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append((deploy / "shop-alerts.yml").read_text())
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bshop_[a-z_]+", expr)
    }
    text = admin_client.get("/metrics").content.decode()
    exported = set(re.findall(r"^# HELP (\S+)", text, flags=re.MULTILINE))
    assert used, "the deploy files name no metric"
    assert used - exported == set()
