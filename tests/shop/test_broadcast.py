"""shop.broadcast: one listener per process dispatches each named channel to its handler; a
publish never raises."""

from __future__ import annotations

import logging

import pytest
from django_redis import get_redis_connection

from shop import broadcast
from tests.shop.resilience_helpers import DEAD_REDIS
from tests.workers import wait_for


@pytest.fixture
def handlers():
    """Two handlers on two channels, recording what they get; unregistered afterwards."""
    received: dict[str, list[str]] = {"test:one": [], "test:two": []}
    lost: list[str] = []
    for name, box in received.items():
        broadcast.broadcast_handler_register(
            name, on_message=box.append, on_lost=lambda name=name: lost.append(name)
        )
    yield received, lost
    for name in received:
        broadcast._handlers.pop(name, None)


@pytest.mark.needs_redis
def test_each_channel_reaches_its_own_handler(handlers):
    received, _ = handlers
    # Given this process's listener, subscribed to both channels
    broadcast.broadcast_listen()
    wait_for(lambda: all(broadcast.broadcast_subscribed_since(n) for n in received), timeout=10)

    # When a message is published on each
    assert broadcast.broadcast_publish("test:one", "first") is True
    assert broadcast.broadcast_publish("test:two", 2) is True

    # Then each handler gets its own, and only its own
    wait_for(lambda: received["test:one"] and received["test:two"], timeout=10)
    assert received == {"test:one": ["first"], "test:two": ["2"]}


@pytest.mark.needs_redis
def test_a_publish_with_redis_down_returns_false_and_logs(settings, caplog):
    settings.CACHES = DEAD_REDIS
    with caplog.at_level(logging.WARNING, logger="shop.broadcast"):
        assert broadcast.broadcast_publish("test:one", "lost") is False
    assert any("broadcast on test:one lost" in r.getMessage() for r in caplog.records)


@pytest.mark.needs_redis
def test_a_lost_connection_tells_every_handler_and_the_listener_subscribes_again(handlers):
    received, lost = handlers
    broadcast.broadcast_listen()
    wait_for(lambda: all(broadcast.broadcast_subscribed_since(n) for n in received), timeout=10)
    before = {name: broadcast.broadcast_subscribed_since(name) for name in received}

    # When Redis drops the listener's connection
    get_redis_connection("default").execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    # Then each handler hears it was lost (to clear what it may miss), and the listener is
    # subscribed again, since a later moment, and dispatching
    wait_for(lambda: set(lost) >= set(received), timeout=10)
    wait_for(
        lambda: all((broadcast.broadcast_subscribed_since(n) or 0) > before[n] for n in received),
        timeout=10,
    )
    assert broadcast.broadcast_publish("test:one", "after")
    wait_for(lambda: received["test:one"] == ["after"], timeout=10)


@pytest.mark.needs_redis
def test_the_listener_outlives_an_unexpected_error(handlers, monkeypatch):
    received, lost = handlers
    broadcast.broadcast_listen()
    wait_for(lambda: all(broadcast.broadcast_subscribed_since(n) for n in received), timeout=10)
    dispatch = broadcast._dispatch
    failures: list[str] = []

    def failing_once(channels, message, reconnected):
        if message["type"] == "message" and not failures:
            failures.append(message["data"])
            raise RuntimeError("not a Redis error")  # e.g. a socket closed by another thread
        dispatch(channels, message, reconnected)

    monkeypatch.setattr(broadcast, "_dispatch", failing_once)

    # When handling a message fails with an error that is not Redis's
    assert broadcast.broadcast_publish("test:one", "breaks")
    wait_for(lambda: failures, timeout=10)

    # Then the handlers hear that messages may be lost, and the same thread subscribes again
    # and delivers the next message (a dead listener would leave caches trusting stale entries)
    wait_for(lambda: set(lost) >= set(received), timeout=10)
    wait_for(lambda: all(broadcast.broadcast_subscribed_since(n) for n in received), timeout=10)
    assert broadcast.broadcast_publish("test:one", "after")
    wait_for(lambda: received["test:one"] == ["after"], timeout=10)
