"""The API's side of ``shop.parsing``: every JSON body, every strict number field.

:class:`BoundedJSONParser` is the one JSON parser of the API (``DEFAULT_PARSER_CLASSES``): it
reads at most ``API_MAX_JSON_BYTES`` (413 ``payload_too_large`` past it) and parses with
:func:`shop.parsing.json_loads_bounded` (400 ``parse_error`` for anything that is not UTF-8
JSON nested at most ``JSON_MAX_DEPTH`` deep). DRF's own ``JSONParser`` reads any size and lets a
``RecursionError`` out as a 500.

Views that need the raw bytes (a signed webhook) read them through :func:`body_bounded`, which
applies the same size bound.
"""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from django.http import HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from shop.errors import PayloadTooLarge, ValidationFailed
from shop.parsing import INT64_MAX, ParseRefused, json_loads_bounded, parse_int, parse_page


class BoundedJSONParser(JSONParser):
    """``application/json`` bodies of at most API_MAX_JSON_BYTES, nested at most
    JSON_MAX_DEPTH deep. JSON is UTF-8 (RFC 8259): a ``charset`` parameter is not honoured."""

    def parse(
        self,
        stream: IO[bytes] | None,
        media_type: str | None = None,
        parser_context: dict[str, Any] | None = None,
    ) -> Any:
        limit = settings.API_MAX_JSON_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(f"A JSON body may be at most {limit} bytes.")
        try:
            return json_loads_bounded(raw)
        except ParseRefused as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc


def body_bounded(request: HttpRequest, *, limit: int | None = None) -> bytes:
    """The raw body, at most ``limit`` bytes (API_MAX_JSON_BYTES by default): PayloadTooLarge
    past it, ValidationFailed for a Content-Length that is not a number. Django reads no more
    than Content-Length, so checking it first bounds what is read."""
    limit = settings.API_MAX_JSON_BYTES if limit is None else limit
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = parse_int(declared)
    except ParseRefused as exc:
        raise ValidationFailed("Content-Length is not a number of bytes.") from exc
    if length > limit:
        raise PayloadTooLarge(f"The body may be at most {limit} bytes.")
    return request.body


@extend_schema_field(OpenApiTypes.INT)
class StrictIntegerField(serializers.Field):
    """An integer in ``[min_value, max_value]`` read by :func:`shop.parsing.parse_int`: a JSON
    integer or a string of ASCII digits. Refuses what DRF's IntegerField accepts and should
    not: ``"１"`` (full-width), ``"١"`` (Arabic-Indic), ``1.0``, ``"1_000"``, ``" 7 "``."""

    default_error_messages = {
        "invalid": "A whole number between {min_value} and {max_value} is required.",
    }

    def __init__(self, *, min_value: int = 0, max_value: int = INT64_MAX, **kwargs: Any) -> None:
        self.min_value, self.max_value = min_value, max_value
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        try:
            return parse_int(data, min_value=self.min_value, max_value=self.max_value)
        except ParseRefused:
            self.fail("invalid", min_value=self.min_value, max_value=self.max_value)
            raise  # unreachable: fail() raises

    def to_representation(self, value: int) -> int:
        return int(value)


class PageField(StrictIntegerField):
    """``?page=``: 1 when absent or empty (:func:`shop.parsing.parse_page`); a page past the
    end is the listing's 404, not a 400."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("default", 1)
        super().__init__(min_value=1, max_value=INT64_MAX, **kwargs)

    def to_internal_value(self, data: Any) -> int:
        try:
            return parse_page(data)
        except ParseRefused:
            self.fail("invalid", min_value=self.min_value, max_value=self.max_value)
            raise  # unreachable: fail() raises


__all__ = ["BoundedJSONParser", "PageField", "StrictIntegerField", "body_bounded"]
