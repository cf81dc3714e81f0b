"""A process remembers a token's user: AUTH_TOKEN_CACHE_TTL seconds, and no longer, unless its
broadcast listener is subscribed to revocations (then AUTH_TOKEN_CACHE_TTL_SUBSCRIBED, and a
revocation in any process drops the entry at once)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from shop import broadcast
from shop.authentication import REVOCATION_CHANNEL, token_cache
from tests.workers import django_process, wait_for

URL = "/api/v1/orders/"  # any route that needs a signed-in buyer (it reads the order shards)
pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def token(db) -> Token:
    user = get_user_model().objects.create_user("tina", password="pw-123456789")
    return Token.objects.create(user=user)


@pytest.fixture(autouse=True)
def _empty_cache():
    token_cache.clear()
    yield
    token_cache.clear()


def _get(token_key: str) -> int:
    return APIClient().get(URL, HTTP_AUTHORIZATION=f"Token {token_key}").status_code


def _token_queries(token_key: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert _get(token_key) == 200
    return sum('"authtoken_token"' in q["sql"] for q in queries.captured_queries)


def test_a_known_token_is_not_looked_up_again_within_the_ttl(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 60
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 0


def test_with_ttl_zero_every_request_looks_the_token_up(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 1


def test_a_deleted_token_is_refused_once_the_ttl_has_passed(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0.3
    key = token.key
    assert _get(key) == 200
    token.delete()
    assert _get(key) == 200  # still trusted by this process, as documented
    time.sleep(0.35)
    assert _get(key) == 401


def test_a_deactivated_user_is_refused_once_the_ttl_has_passed(settings, token):
    settings.AUTH_TOKEN_CACHE_TTL = 0.3
    assert _get(token.key) == 200
    get_user_model().objects.filter(pk=token.user_id).update(is_active=False)
    time.sleep(0.35)
    assert _get(token.key) == 401


def test_an_unknown_token_is_refused_every_time(settings, db):
    settings.AUTH_TOKEN_CACHE_TTL = 60
    assert _get("f" * 40) == 401
    assert _get("f" * 40) == 401


# --- revocations through the broadcast listener (real Redis, committed rows) ------------------

live = pytest.mark.django_db(databases="__all__", transaction=True)


@pytest.fixture
def trusted_long(settings):
    """Both TTLs a minute: within a test only a revocation message can explain a refusal."""
    settings.AUTH_TOKEN_CACHE_TTL = 60
    settings.AUTH_TOKEN_CACHE_TTL_SUBSCRIBED = 60


def _subscribed() -> bool:
    return broadcast.broadcast_subscribed_since(REVOCATION_CHANNEL) is not None


def _listening(token_key: str) -> None:
    """A first request starts this process's listener; wait until it is subscribed, then start
    from an empty cache (an entry looked up before the subscription is trusted only briefly)."""
    _get(token_key)
    wait_for(_subscribed, timeout=10)
    token_cache.clear()


def _in_another_process(code: str) -> None:
    process = django_process(code)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output


def _kill_listener_connections() -> None:
    """Close every pub/sub connection of this Redis server, as a network fault would."""
    get_redis_connection("default").execute_command("CLIENT", "KILL", "TYPE", "pubsub")


@pytest.fixture
def listener_unreachable(monkeypatch):
    """This process's listener can no longer reach Redis (the rest of the process still can)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    monkeypatch.setattr(broadcast, "_listener_redis", lambda: dead)
    _kill_listener_connections()
    wait_for(lambda: not _subscribed(), timeout=10)


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_a_token_deleted_by_another_process_is_refused_at_once(trusted_long, token):
    # Given a token this process has cached, trusted for a minute
    _listening(token.key)
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 0

    # When another process deletes it through the ORM
    _in_another_process(
        "from rest_framework.authtoken.models import Token\n"
        f"Token.objects.get(key={token.key!r}).delete()"
    )

    # Then this process refuses it as soon as the message arrives, not a minute later
    wait_for(lambda: _get(token.key) == 401, timeout=10)


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_a_user_deactivated_by_another_process_is_refused_at_once(trusted_long, token):
    _listening(token.key)
    assert _token_queries(token.key) == 1

    # When another process saves the user inactive
    _in_another_process(
        "from django.contrib.auth import get_user_model\n"
        f"user = get_user_model().objects.get(pk={token.user_id})\n"
        "user.is_active = False\n"
        "user.save()"
    )

    wait_for(lambda: _get(token.key) == 401, timeout=10)


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_a_new_password_drops_the_cached_token_and_a_login_does_not(trusted_long, token):
    _listening(token.key)
    assert _token_queries(token.key) == 1
    user = get_user_model().objects.get(pk=token.user_id)

    # A save that touches neither the password nor is_active keeps the entry
    user.last_login = None
    user.save(update_fields=["last_login"])
    assert _token_queries(token.key) == 0

    # A new password drops it (the token itself is still valid: looked up again)
    user.set_password("another-pw-123456")
    user.save()
    wait_for(lambda: _token_queries(token.key) == 1, timeout=10)


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_deactivating_users_in_bulk_revokes_their_tokens(trusted_long, token):
    from apps.users.services import users_deactivate

    _listening(token.key)
    assert _token_queries(token.key) == 1

    assert users_deactivate(user_ids=[token.user_id]) == 1

    assert _get(token.key) == 401
    assert not Token.objects.filter(user_id=token.user_id).exists()


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_not_subscribed_an_entry_lives_only_the_short_ttl(settings, token, listener_unreachable):
    # Given a listener that cannot reach Redis, a long subscribed TTL and a short plain one
    settings.AUTH_TOKEN_CACHE_TTL = 0.5
    settings.AUTH_TOKEN_CACHE_TTL_SUBSCRIBED = 60
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 0  # cached

    # Then the entry is looked up again once the short TTL has passed, not after a minute
    wait_for(lambda: _token_queries(token.key) == 1, timeout=10)


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_a_reconnect_clears_the_cache(trusted_long, token, listener_unreachable, monkeypatch):
    # Given an entry cached while the listener was away (messages may have been missed)
    assert _token_queries(token.key) == 1
    assert _token_queries(token.key) == 0

    # When the listener reaches Redis again
    monkeypatch.undo()
    wait_for(_subscribed, timeout=10)

    # Then the entry is gone: the next request looks the token up again
    assert _token_queries(token.key) == 1


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@live
def test_an_entry_cached_by_another_thread_serves_the_next_request(settings, token):
    # Only the subscribed TTL caches: without the listener every request would look it up
    settings.AUTH_TOKEN_CACHE_TTL = 0
    settings.AUTH_TOKEN_CACHE_TTL_SUBSCRIBED = 60
    _listening(token.key)
    statuses = []

    def request() -> None:
        try:
            statuses.append(_get(token.key))
        finally:
            connections.close_all()

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    assert statuses == [200]

    assert _token_queries(token.key) == 0
