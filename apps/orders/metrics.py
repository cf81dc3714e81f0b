"""Checkout metrics: outcomes (event counters). A leaf: imports nothing from the app."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import Counter

from shop.errors import ShopError

CHECKOUTS = Counter(
    "shop_checkouts_total",
    "Checkouts by outcome: accepted (an order was placed, directly or from a ticket), queued "
    "(a ticket was issued), rejected (with the reason's error code)",
    ["outcome", "reason"],
)

F = TypeVar("F", bound=Callable[..., Any])


def checkout_observed(outcome: str, reason: str = "") -> None:
    CHECKOUTS.labels(outcome, reason).inc()


def checkout_counted(fn: F) -> F:
    """Count a checkout service's result: accepted when it returns, rejected with the error's
    code when it refuses (a ShopError); other exceptions are bugs and counted elsewhere."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ShopError as exc:
            checkout_observed("rejected", exc.code)
            raise
        checkout_observed("accepted")
        return result

    return wrapper  # type: ignore[return-value]
