"""Storefront template helpers: ``{% load catalog_tags %}``.

``money`` formats an integer amount in minor units (cents) with integer arithmetic only, so a
price is never rounded through a float. ``attrs`` turns a SKU's attribute dict into one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import template

register = template.Library()

EMPTY = "—"
# ISO 4217 minor-unit exponents that differ from the usual 2.
CURRENCY_EXPONENTS = {
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
    "CLP": 0,
    "ISK": 0,
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
}
DEFAULT_EXPONENT = 2
CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}


def currency_exponent(currency: str | None) -> int:
    return CURRENCY_EXPONENTS.get((currency or "").upper(), DEFAULT_EXPONENT)


@register.filter
def money(amount: Any, currency: str | None = None) -> str:
    """``123456|money:"EUR"`` → ``€1,234.56``; ``1234|money:"CHF"`` → ``12.34 CHF``."""
    if amount is None or amount == "" or isinstance(amount, bool):
        return EMPTY
    try:
        minor = int(amount)  # ints (and digit strings) only: a float price is a bug upstream
    except (TypeError, ValueError):
        return EMPTY
    if isinstance(amount, float) and amount != minor:
        return EMPTY
    code = (currency or "").upper()
    exponent = currency_exponent(code)
    sign = "-" if minor < 0 else ""
    major, fraction = divmod(abs(minor), 10**exponent)
    number = f"{major:,}"
    if exponent:
        number = f"{number}.{fraction:0{exponent}d}"
    symbol = CURRENCY_SYMBOLS.get(code)
    if symbol:
        return f"{sign}{symbol}{number}"
    return f"{sign}{number} {code}".rstrip()


@register.filter
def attrs(attributes: Any) -> str:
    """``{"color": "red", "size": "M"}`` → ``Color: red · Size: M``."""
    if not isinstance(attributes, Mapping) or not attributes:
        return ""
    return " · ".join(
        f"{str(key).replace('_', ' ').capitalize()}: {value}" for key, value in attributes.items()
    )
