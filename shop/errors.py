"""One error type for the whole shop, and the two places that render it.

Every domain error subclasses :class:`ShopError`. The DRF exception handler renders it as the
API.md body ``{"code", "detail", ...}``; :class:`ShopErrorMiddleware` renders it as a friendly
storefront page. Both set ``Retry-After`` where it applies. A lost database connection becomes
``503 service_unavailable``, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

from shop.logs import EXPECTED_REFUSALS

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


class ShopError(Exception):
    """Base of every error the shop reports to a client on purpose."""

    code = "error"
    http_status = 400
    default_message = "The request could not be completed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        http_status: int | None = None,
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.message = message or self.default_message
        if code:
            self.code = code
        if http_status:
            self.http_status = http_status
        self.extra = extra or {}
        self.retry_after = retry_after
        super().__init__(self.message)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "detail": self.message, **self.extra}


class ValidationFailed(ShopError):
    code = "validation_error"
    http_status = 400
    default_message = "Invalid input."


class NotFound(ShopError):
    code = "not_found"
    http_status = 404
    default_message = "Not found."


class PageNotFound(NotFound):
    """A page number past the last page of a listing (page 1 always exists, even if empty)."""

    default_message = "No such page."


class PayloadTooLarge(ShopError):
    code = "payload_too_large"
    http_status = 413
    default_message = "The request body is too large."


class ServiceUnavailable(ShopError):
    code = "service_unavailable"
    http_status = 503
    default_message = "This part of the shop is temporarily unavailable. Please try again shortly."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", settings.SERVICE_UNAVAILABLE_RETRY_AFTER)
        super().__init__(message, **kwargs)


# DRF's default codes, renamed where API.md names them differently.
_DRF_CODES = {"invalid": "validation_error", "throttled": "rate_limited"}


def _database_unavailable(exc: Exception) -> ServiceUnavailable:
    logger.warning("database unavailable: %s", exc)
    return ServiceUnavailable("The shop's database is temporarily unavailable.")


def _drf_detail_text(detail: Any) -> str:
    if isinstance(detail, list | tuple):
        return " ".join(str(item) for item in detail) or "Invalid input."
    if isinstance(detail, dict):
        return "Invalid input."
    return str(detail)


def error_body_for(exc: Exception) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """The API.md error body, status and headers for ``exc``; None for an unexpected error."""
    if isinstance(exc, OperationalError | InterfaceError):
        exc = _database_unavailable(exc)
    if isinstance(exc, Http404):
        exc = NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # past DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = PayloadTooLarge()
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = ValidationFailed("The request has too many fields or files.")

    if isinstance(exc, ShopError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
        return exc.as_dict(), exc.http_status, headers

    if isinstance(exc, drf_exceptions.APIException):
        code = _DRF_CODES.get(exc.default_code, exc.default_code)
        body: dict[str, Any] = {"code": code}
        headers = {}
        if isinstance(exc, drf_exceptions.ValidationError):
            body["detail"] = (
                "Invalid input." if isinstance(exc.detail, dict) else _drf_detail_text(exc.detail)
            )
            if isinstance(exc.detail, dict):
                body["fields"] = exc.detail
        else:
            body["detail"] = _drf_detail_text(exc.detail)
        if isinstance(exc, drf_exceptions.Throttled) and exc.wait is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        return body, exc.status_code, headers
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: every API error as ``{"code", "detail", ...}``."""
    rendered = error_body_for(exc)
    if rendered is None:
        return None  # a bug: Django's 500 handler (JSON under /api/) takes it
    # APIView.handle_exception has already chosen 401 + WWW-Authenticate or 403 on `exc`.
    body, status, headers = rendered
    return Response(body, status=status, headers=headers)


def is_api_request(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def render_error(request: HttpRequest, exc: Exception) -> HttpResponse | None:
    """Render ``exc`` as JSON (API paths) or a friendly page (storefront); None if unexpected."""
    rendered = error_body_for(exc)
    if rendered is None:
        return None
    body, status, headers = rendered
    if is_api_request(request):
        response: HttpResponse = JsonResponse(body, status=status)
    else:
        response = render(
            request,
            "errors/shop_error.html",
            {"code": body["code"], "detail": body.get("detail", ""), "status": status},
            status=status,
        )
    for name, value in headers.items():
        response[name] = value
    if status in EXPECTED_REFUSALS:
        # An answer, not a problem (shop.logs.ExpectedRefusalFilter): Django need not even
        # build its warning record, which costs a sold-out sale's refusal a fifth of its time.
        response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class ShopErrorMiddleware:
    """Turns errors that escape a view into API.md bodies or storefront pages."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404 | DjangoPermissionDenied):
            return None  # Django's own 404/403 handlers render these (handler404 below)
        return render_error(request, exception)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse({"code": "not_found", "detail": "Not found."}, status=404)
    return render(request, "errors/404.html", status=404)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A request Django itself refused before or around the view (a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE, too many form fields, a malformed multipart body): the API.md
    body under /api/, the friendly error page elsewhere — never Django's bare page."""
    rendered = render_error(request, exception) if exception is not None else None
    if rendered is not None:
        return rendered
    if is_api_request(request):
        return JsonResponse(
            {"code": "bad_request", "detail": "The request could not be read."}, status=400
        )
    return render(
        request,
        "errors/shop_error.html",
        {"code": "bad_request", "detail": "The request could not be read.", "status": 400},
        status=400,
    )


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_request(request):
        return JsonResponse(
            {"code": "server_error", "detail": "An unexpected error occurred; it was logged."},
            status=500,
        )
    return render(request, "errors/500.html", status=500)
