"""shop.early: a view's ``answer_before_limits`` hook answers a write to its route before the
rest of the middleware (sessions, CSRF, URL resolution, rate limits, the view itself), is
asked once per request, and steps aside while the shop is read-only."""

from __future__ import annotations

import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from prometheus_client import REGISTRY

from shop.early import early_routes
from shop.runtime import runtime_refresh, switch_set

asked: list[str] = []
viewed: list[str] = []


def _hook(request: HttpRequest):
    asked.append(request.method)
    if request.META.get("HTTP_X_SOLD_OUT"):
        return JsonResponse({"code": "out_of_stock"}, status=409)
    return None


def _view(request: HttpRequest) -> HttpResponse:
    viewed.append(request.method)
    return JsonResponse({"ok": True}, status=201)


_view.answer_before_limits = _hook  # type: ignore[attr-defined]
_view.csrf_exempt = True  # type: ignore[attr-defined]


def _with_parameter(request: HttpRequest, number: int) -> HttpResponse:
    return _view(request)


_with_parameter.answer_before_limits = _hook  # type: ignore[attr-defined]
_with_parameter.csrf_exempt = True  # type: ignore[attr-defined]

_inner = [path("buy/", _view, name="buy"), path("buy/<int:number>/", _with_parameter)]
urlpatterns = [path("api/v1/early/", include((_inner, "early")))]


@pytest.fixture(autouse=True)
def _urls(settings):
    settings.ROOT_URLCONF = __name__
    asked.clear()
    viewed.clear()


def _count(status: str) -> float:
    labels = {"route": "early:buy", "method": "POST", "status": status}
    return REGISTRY.get_sample_value("shop_http_requests_total", labels) or 0.0


def test_only_parameterless_routes_with_a_hook_are_found():
    assert {path: route for path, (_, route) in early_routes(__name__).items()} == {
        "/api/v1/early/buy/": "early:buy"
    }


@pytest.mark.django_db
def test_the_hook_answers_before_the_view_and_is_counted_under_its_route(client):
    before = _count("409")

    response = client.post("/api/v1/early/buy/", HTTP_X_SOLD_OUT="1")

    assert response.status_code == 409
    assert response.json() == {"code": "out_of_stock"}
    assert (asked, viewed) == (["POST"], [])
    assert _count("409") == before + 1
    assert response["X-Request-ID"]  # the middleware above it still ran


@pytest.mark.django_db
def test_a_request_the_hook_lets_through_reaches_the_view_and_the_hook_is_asked_once(client):
    response = client.post("/api/v1/early/buy/")

    assert response.status_code == 201
    assert (asked, viewed) == (["POST"], ["POST"])


@pytest.mark.django_db
def test_a_route_with_parameters_is_asked_by_the_throttle_as_before(client):
    response = client.post("/api/v1/early/buy/7/", HTTP_X_SOLD_OUT="1")

    assert response.status_code == 409
    assert (asked, viewed) == (["POST"], [])


@pytest.mark.django_db
def test_reads_are_never_answered_early(client):
    response = client.get("/api/v1/early/buy/", HTTP_X_SOLD_OUT="1")

    assert response.status_code == 201
    assert (asked, viewed) == ([], ["GET"])


@pytest.mark.django_db
def test_while_read_only_the_write_is_refused_as_every_write_is(client):
    switch_set(name="read_only", on=True)
    runtime_refresh()
    try:
        response = client.post("/api/v1/early/buy/", HTTP_X_SOLD_OUT="1")
    finally:
        switch_set(name="read_only", on=False)
        runtime_refresh()

    assert response.status_code == 503
    assert (asked, viewed) == ([], [])


@pytest.mark.django_db
def test_a_request_for_an_unknown_host_is_refused_before_the_hook(client):
    response = client.post("/api/v1/early/buy/", HTTP_X_SOLD_OUT="1", HTTP_HOST="evil.example")

    assert response.status_code == 400
    assert (asked, viewed) == ([], [])
