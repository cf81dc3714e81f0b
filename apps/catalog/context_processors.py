from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from apps.catalog.selectors import category_menu


def storefront(request: HttpRequest) -> dict[str, Any]:
    """Navigation categories (loaded only by templates that show them), order limits."""
    return {
        "nav_categories": SimpleLazyObject(category_menu),
        "order_line_max": settings.ORDER_LINE_MAX_QUANTITY,
    }
