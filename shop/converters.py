"""URL path converters for untrusted path segments.

Django's ``<int:...>`` matches any number of digits: a 5,000-digit or a 2**64 "id" reaches the
view, and from there a query (a bigint overflow on PostgreSQL, an OverflowError on SQLite) or
an ``int()`` of an over-long string. ``<id64:...>`` (registered in config/urls.py) matches only
what :func:`shop.parsing.parse_id` accepts — 1 to 19 ASCII digits, 1..2**63-1 — so anything
else is an ordinary 404 before a view runs.
"""

from __future__ import annotations

from shop.parsing import INT64_DIGITS, ParseRefused, parse_id


class Id64Converter:
    regex = f"[0-9]{{1,{INT64_DIGITS}}}"

    def to_python(self, value: str) -> int:
        try:
            return parse_id(value)
        except ParseRefused as exc:
            raise ValueError(str(exc)) from exc  # Django: no match, so 404

    def to_url(self, value: int | str) -> str:
        return str(parse_id(value if isinstance(value, int) else str(value)))
