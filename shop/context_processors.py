from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from shop.runtime import switch_on


def switches(request: HttpRequest) -> dict[str, Any]:
    """Degradation switches templates honour (read-only banner, hidden widgets)."""
    return {"read_only": switch_on("read_only"), "widgets_off": switch_on("widgets_off")}
