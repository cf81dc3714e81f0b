"""The storefront cart: SKU codes and quantities in the buyer's session."""

from __future__ import annotations

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase

SESSION_KEY = "cart"


class Cart:
    def __init__(self, session: SessionBase) -> None:
        self.session = session

    @property
    def items(self) -> dict[str, int]:
        return dict(self.session.get(SESSION_KEY, {}))

    def _save(self, items: dict[str, int]) -> None:
        self.session[SESSION_KEY] = items

    def add(self, code: str, quantity: int) -> int:
        """Add units (capped at the per-line maximum); returns the line's new quantity."""
        items = self.items
        if code not in items and len(items) >= settings.ORDER_MAX_LINES:
            raise ValueError(f"A cart holds at most {settings.ORDER_MAX_LINES} different items.")
        items[code] = min(items.get(code, 0) + quantity, settings.ORDER_LINE_MAX_QUANTITY)
        self._save(items)
        return items[code]

    def set(self, code: str, quantity: int) -> None:
        items = self.items
        if quantity <= 0:
            items.pop(code, None)
        elif code in items:
            items[code] = min(quantity, settings.ORDER_LINE_MAX_QUANTITY)
        self._save(items)

    def clear(self) -> None:
        self._save({})

    def as_order_items(self) -> list[dict[str, object]]:
        return [{"sku": code, "quantity": quantity} for code, quantity in self.items.items()]

    def __len__(self) -> int:
        return sum(self.items.values())
