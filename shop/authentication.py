"""DRF authentication that also tells the log context who is asking.

DRF authenticates lazily, inside the view, after every middleware has run; this is the first
place a token user's id is known. Session users are bound earlier by
``shop.logs.RequestIdMiddleware``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import TokenAuthentication
from rest_framework.request import Request

from shop.logs import log_context_bind


class LogContextTokenAuthentication(TokenAuthentication):
    """``Authorization: Token <key>``, binding the user id to the log context."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        result = super().authenticate(request)
        if result is not None:
            log_context_bind(user_id=result[0].pk)
        return result
