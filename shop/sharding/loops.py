"""Loops over the order shards, each shard in its own error boundary (DESIGN §6: background
jobs skip a dead shard, report it and finish the others).

:func:`shards_each` runs ``fn(alias)`` for every order shard. A database error *of that shard*
(its server gone, its connection reset) is logged, counted in
``shop_shard_loop_errors_total{loop,shard}`` and announced through :data:`shard_loop_failed`
(``shop.alerts`` turns it into a de-duplicated alert); the loop goes on with the next shard.
An error of another database (``default``) is not the shard's and propagates as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, connections
from django.dispatch import Signal

from shop.metrics import SHARD_LOOP_ERRORS
from shop.sharding import ShardUnavailable, order_shard_aliases

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Sent (sender = the loop's name) with ``loop``, ``alias`` and ``error`` when a shard is
#: skipped. The kernel's alerting listens; the loop never waits on it.
shard_loop_failed = Signal()


def _shards_error(alias: str, exc: BaseException) -> bool:
    """Whether ``exc`` came from shard ``alias``: Django marks the connection a database
    error went through (connecting included)."""
    return isinstance(exc, ShardUnavailable) or connections[alias].errors_occurred


def _tidy(alias: str) -> None:
    # A broken connection is dropped so the next run reconnects (not inside a transaction
    # of the caller's, which owns it).
    connection = connections[alias]
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def shards_each(
    loop: str, fn: Callable[[str], T], *, aliases: list[str] | None = None
) -> dict[str, T]:
    """``{alias: fn(alias)}`` for every order shard (or ``aliases``) that answered; a shard
    whose database failed is left out, logged, counted and alerted (see the module)."""
    results: dict[str, T] = {}
    for alias in order_shard_aliases() if aliases is None else aliases:
        try:
            results[alias] = fn(alias)
        except (DatabaseError, ShardUnavailable) as exc:
            if not _shards_error(alias, exc):
                raise
            logger.warning("%s: shard %s skipped: %s: %s", loop, alias, type(exc).__name__, exc)
            SHARD_LOOP_ERRORS.labels(loop, alias).inc()
            _tidy(alias)
            shard_loop_failed.send(sender=loop, loop=loop, alias=alias, error=exc)
    return results
