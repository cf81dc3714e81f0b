"""Counting Redis round trips for work-budget tests: a command, a pipeline or a script call
is one round trip."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import redis


@contextlib.contextmanager
def redis_round_trips(*, this_thread_only: bool = False) -> Iterator[list[str]]:
    """The round trips made inside the block, as a list of their commands ("pipeline" for a
    pipeline), filled as they happen. By every thread, or with ``this_thread_only`` by the
    thread that entered the block (not the broadcast listener's or a publisher's)."""
    trips: list[str] = []
    entered = threading.current_thread()

    def counted(original: Callable[..., Any], *, pipeline: bool) -> Callable[..., Any]:
        def call(client: Any, *args: Any, **kwargs: Any) -> Any:
            if not this_thread_only or threading.current_thread() is entered:
                trips.append("pipeline" if pipeline or not args else str(args[0]))
            return original(client, *args, **kwargs)

        return call

    with (
        mock.patch.object(
            redis.Redis, "execute_command", counted(redis.Redis.execute_command, pipeline=False)
        ),
        mock.patch.object(
            redis.client.Pipeline, "execute", counted(redis.client.Pipeline.execute, pipeline=True)
        ),
    ):
        yield trips
