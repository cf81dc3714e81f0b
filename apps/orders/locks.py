"""Locks of the orders app. Rows are always locked in primary-key order."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import connections

# Namespace of the per-buyer checkout lock among PostgreSQL advisory locks.
_CHECKOUT_LOCK_CLASS = 7301


@contextlib.contextmanager
def buyer_checkout_lock(*, alias: str, user_id: int) -> Iterator[None]:
    """Serialise one buyer's checkouts on their shard (PostgreSQL advisory lock), so per-user
    purchase limits cannot be beaten by parallel requests. Other buyers never wait on it.
    SQLite (embedded profile) already runs one writer at a time."""
    connection = connections[alias]
    if connection.vendor != "postgresql":
        yield
        return
    key = int(user_id) & 0x7FFFFFFF
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [_CHECKOUT_LOCK_CLASS, key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_CHECKOUT_LOCK_CLASS, key])
