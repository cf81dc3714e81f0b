"""OpenAPI naming for views written as ``<Noun><Verb>Api`` with nested serializers, and the
error answers every operation can give (documented here once, not view by view)."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from shop.idempotency import HEADER as IDEMPOTENCY_HEADER

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The API.md error body. Extra members say more about one error (`fields` for validation
# errors, `layer` for a rate limit, `status` for an invalid state...).
ERROR_COMPONENT = ResolvedComponent(
    name="Error",
    type=ResolvedComponent.SCHEMA,
    object="Error",
    schema={
        "type": "object",
        "description": 'Every error: `{"code", "detail", ...}` (API.md).',
        "properties": {
            "code": {"type": "string", "description": "Machine-readable, e.g. not_found."},
            "detail": {"type": "string", "description": "Human-readable."},
            "fields": {
                "type": "object",
                "additionalProperties": True,
                "description": "Validation errors by field.",
            },
        },
        "required": ["code", "detail"],
        "additionalProperties": True,
    },
)

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

# status → (description, carries Retry-After)
ERRORS: dict[int, tuple[str, bool]] = {
    400: ("Invalid input (`validation_error`, `idempotency_key_required`, ...).", False),
    401: ("No valid credentials: a missing, unknown or malformed token.", False),
    403: ("This account may not do this (or the session's CSRF check failed).", False),
    404: ("Not found, or not the caller's (`not_found`).", False),
    409: (
        "Refused in the current state (`invalid_state`, `out_of_stock`, ...), or the same "
        "Idempotency-Key is still in flight (`idempotency_conflict`).",
        False,
    ),
    422: ("The Idempotency-Key was used with other parameters (`idempotency_mismatch`).", False),
    429: ("Rate limited (`rate_limited`, naming the `layer`).", True),
    503: ("A dependency is down or the shop is read-only (`service_unavailable`).", True),
}

# An Idempotency-Key: 1-255 printable ASCII characters (shop.idempotency.validate_key). HTTP
# strips a header value's surrounding blanks, so a documented key neither starts nor ends
# with a space.
IDEMPOTENCY_KEY_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[!-~]([ -~]{0,253}[!-~])?$",
}


def page_schema(results: dict[str, Any]) -> dict[str, Any]:
    link = {"type": "string", "format": "uri", "nullable": True}
    return {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "next": link,
            "previous": link,
            "results": results,
        },
        "required": ["count", "next", "previous", "results"],
    }


class ShopAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer: serializers.BaseSerializer, direction: str) -> str:
        """``UserRegisterApi.InputSerializer`` → ``UserRegisterInput``: nested serializers of
        different views never collide on the name ``Input``."""
        qualname = type(serializer).__qualname__
        if "." not in qualname:
            return super().get_serializer_name(serializer, direction)
        outer, inner = qualname.rsplit(".", 2)[-2:]
        return outer.removesuffix("Api") + inner.removesuffix("Serializer")

    def get_operation_id(self) -> str:
        """``ProductListApi`` → ``product_list``: unique, and stable across URL changes. Named
        after the class that defines the handler, so a view combining two operations on one
        path (``OrderCollectionApi``) keeps both names."""
        handler = getattr(self.view, self.method.lower(), None)
        owner = handler.__qualname__.split(".")[0] if handler else type(self.view).__name__
        name = owner.removesuffix("Api")
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        return snake if self.method in ("GET", "POST") else f"{snake}_{self.method.lower()}"

    def get_override_parameters(self) -> list[Any]:
        """A list view's nested ``FilterSerializer`` is its query string: its fields are
        documented as query parameters (parameters the view declares itself take precedence)."""
        declared = super().get_override_parameters()
        filters = getattr(self.view, "FilterSerializer", None)
        if self.method == "GET" and filters is not None:
            return [filters, *declared]
        return declared

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        self._document_page(operation)
        parameters = operation.get("parameters", [])
        for parameter in parameters:
            if parameter["in"] == "header" and parameter["name"] == IDEMPOTENCY_HEADER:
                parameter["schema"] = dict(IDEMPOTENCY_KEY_SCHEMA)
            elif parameter["in"] == "path" and parameter["schema"].get("type") == "integer":
                # Django's <int:...> converter matches digits only: no sign.
                parameter["schema"] = {**parameter["schema"], "minimum": 0}
        self.registry.register_on_missing(ERROR_COMPONENT)
        responses = operation["responses"]
        for status in self.error_statuses(parameters):
            description, retry_after = ERRORS[status]
            response: dict[str, Any] = {
                "description": description,
                "content": {"application/json": {"schema": ERROR_COMPONENT.ref}},
            }
            if retry_after:
                response["headers"] = RETRY_AFTER
            responses.setdefault(str(status), response)
        return operation

    def _document_page(self, operation: dict[str, Any]) -> None:
        """A list filtered by ``page`` answers one page (API.md): ``{"count", "next",
        "previous", "results"}``, not the bare list its handler declares."""
        filters = getattr(self.view, "FilterSerializer", None)
        if self.method != "GET" or filters is None or "page" not in filters().fields:
            return
        for content in operation["responses"].get("200", {}).get("content", {}).values():
            listing = content.get("schema", {})
            if listing.get("type") == "array":
                content["schema"] = page_schema(listing)

    def error_statuses(self, parameters: list[dict[str, Any]]) -> list[int]:
        """The error answers this operation can give, from what it takes and who may call it.

        Every operation can be rate limited (429) or meet a dependency that is down (503).
        A write, or anything with query or header parameters, can be invalid (400). A view
        that authenticates refuses bad credentials (401); one that needs a permission refuses
        callers without it, and session-authenticated writes fail the CSRF check (403).
        Anything that names a thing (in the path, or as a filter) can miss it (404). An
        idempotent write can be refused in its state or meet its key in flight (409), and its
        key can be reused for other parameters (422)."""
        where = {parameter["in"] for parameter in parameters}
        safe = self.method in SAFE_METHODS
        authenticates = bool(self.view.get_authenticators())
        restricted = any(
            not isinstance(permission, AllowAny) for permission in self.view.get_permissions()
        )
        idempotent = any(
            parameter["in"] == "header" and parameter["name"] == IDEMPOTENCY_HEADER
            for parameter in parameters
        )
        statuses = {429, 503}
        if not safe or where & {"query", "header"}:
            statuses.add(400)
        if authenticates:
            statuses.add(401)
        if restricted or (authenticates and not safe):
            statuses.add(403)
        if where & {"path", "query"}:
            statuses.add(404)
        if idempotent:
            statuses |= {409, 422}
        return sorted(statuses)
