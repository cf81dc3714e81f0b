from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from shop.pagecache import page_depends_on
from shop.runtime import switch_on


def switches(request: HttpRequest) -> dict[str, Any]:
    """Degradation switches templates honour (read-only banner, hidden widgets)."""
    shown = {"read_only": switch_on("read_only"), "widgets_off": switch_on("widgets_off")}
    # A shared page showing this banner or hiding widgets is kept only while the switches hold.
    page_depends_on("switches", dict(shown))
    return shown
