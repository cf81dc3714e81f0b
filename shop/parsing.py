"""Strict parsers for untrusted text: numbers and JSON bodies.

Everything a client or a bank sends reaches the shop as text. These helpers turn it into a value
or refuse it with :class:`ParseRefused` (a ``ValueError``), and never raise anything else,
whatever the input: no ``OverflowError`` from a 400-digit number, no ``RecursionError`` from JSON
nested a thousand deep, no ``int("²")`` surprise (``str.isdigit`` accepts Unicode digits that
``int`` rejects or reads differently). Callers turn the refusal into a 4xx.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: The largest value of a signed 64-bit column (ids, bigint amounts).
INT64_MAX = 2**63 - 1
#: Digits a 64-bit number can have; longer text is refused before any conversion.
INT64_DIGITS = len(str(INT64_MAX))
_ASCII_DIGITS = frozenset("0123456789")


class ParseRefused(ValueError):
    """The text is not a value of the expected shape; ``str()`` says why, for a 4xx body."""


def parse_int(
    text: object,
    *,
    min_value: int = 0,
    max_value: int = INT64_MAX,
    allow_sign: bool = False,
) -> int:
    """``text`` as an integer in ``[min_value, max_value]``: ASCII digits only (an optional
    leading ``-`` when ``allow_sign``), no spaces, no ``+``, no ``_``, at most as many digits as
    ``max_value`` has. Raises ParseRefused otherwise; never anything else."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ParseRefused("not a whole number")
    if isinstance(text, int):
        value = text
    else:
        body = text[1:] if allow_sign and text.startswith("-") else text
        limit = len(str(max(abs(max_value), abs(min_value))))
        if not body or len(body) > limit or not set(body) <= _ASCII_DIGITS:
            raise ParseRefused("not a whole number in range")
        value = int(text)
    if not min_value <= value <= max_value:
        raise ParseRefused(f"out of range ({min_value}..{max_value})")
    return value


def parse_id(text: object) -> int:
    """A positive 64-bit id (order, payment, product...), or ParseRefused."""
    return parse_int(text, min_value=1, max_value=INT64_MAX)


def parse_amount(text: object) -> int:
    """A non-negative amount of minor units that fits its ``bigint`` column, or ParseRefused."""
    return parse_int(text, min_value=0, max_value=INT64_MAX)


def parse_page(text: object) -> int:
    """A page number (1, 2, ...; absent or empty means 1) in the 64-bit range, or ParseRefused.
    Whether the page exists is the listing's question (past the end: not found)."""
    if text is None or text == "":
        return 1
    return parse_int(text, min_value=1, max_value=INT64_MAX)


def is_canonical_int(text: str) -> bool:
    """Whether ``text`` is the one spelling of its number (no leading zeros): cache keys built
    from a parameter must not multiply by ``1``, ``01``, ``001``..."""
    try:
        return str(parse_int(text)) == text
    except ParseRefused:
        return False


#: JSON nested deeper than this is refused (an order's body is 3 levels deep).
JSON_MAX_DEPTH = 32


def _depth_within(raw: str, max_depth: int) -> bool:
    """Whether no array or object in ``raw`` opens more than ``max_depth`` deep. Brackets inside
    strings do not count; an invalid document may pass here and fail in ``json.loads``."""
    depth = 0
    in_string = escaped = False
    for char in raw:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif char in "]}":
            depth -= 1
    return True


def _refuse_constant(name: str) -> Any:
    raise ParseRefused(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ParseRefused(f"{text[:20]} is out of range")
    return value


def json_loads_bounded(raw: bytes | str, *, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """Parse a JSON document (UTF-8 bytes or text) nested at most ``max_depth`` deep. Raises
    ParseRefused for anything that is not such a document; never anything else. ``NaN``,
    ``Infinity`` and numbers too large for a float are refused (RFC 8259 has no such values;
    DRF's own parser refuses them too), as are integers of more than 4,300 digits."""
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseRefused("the body is not UTF-8") from exc
    else:
        text = raw
    # Counting brackets is C-fast; the character walk only runs when they could nest too deep.
    if text.count("[") + text.count("{") > max_depth and not _depth_within(text, max_depth):
        raise ParseRefused(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except ParseRefused:
        raise
    except (ValueError, RecursionError) as exc:
        raise ParseRefused(f"not valid JSON: {exc}"[:200]) from exc
