"""DESIGN §6: no request waits on the broker. The publisher connects within a few hundred ms
or gives up (the outbox row waits for the relay), a per-process circuit stops it trying again
for OUTBOX_BROKER_BACKOFF seconds, and a connection the broker dropped is replaced by a fresh
one, so the first publish after the broker returns goes out."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings

from shop.models import OutboxMessage
from shop.outbox import background, broker_health, outbox_relay, publisher
from shop.sharding import shard_for_user
from tests.orders.conftest import api_client, assert_invariants_hold, post_order
from tests.workers import broker_pointing_to, purge_queues, queue_depth

ALL = "__all__"
pytestmark = [
    pytest.mark.needs_broker,
    pytest.mark.needs_postgres,
    pytest.mark.django_db(databases=ALL, transaction=True),
]


class SilentBroker:
    """A TCP port that accepts connections and never says a word (a hung broker node, or a
    partition that lets the SYN through). Counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class DroppingProxy:
    """A TCP proxy to the real broker that the test can make drop every connection (the
    broker restarted, a load balancer cut idle connections)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
            with self.lock:
                self.open += [client, server]
                self.connections += 1
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.close()

    def drop(self) -> None:
        with self.lock:
            for end in self.open:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
            self.open = []

    def close(self) -> None:
        self.drop()
        self.sock.close()


def _via(proxy: DroppingProxy) -> str:
    parts = urlsplit(django_settings.CELERY_BROKER_URL)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture(autouse=True)
def _fresh_publisher(settings):
    settings.OUTBOX_RELAY_GRACE = 0
    broker_health.reset()
    publisher.reset()
    purge_queues()
    yield
    broker_health.reset()
    publisher.reset()
    purge_queues()


def test_a_silent_broker_is_tried_once_per_backoff_and_checkouts_complete(buyer, sku, settings):
    # Given a broker that accepts connections and never answers
    settings.OUTBOX_BROKER_BACKOFF = 600  # the window spans this whole test
    silent = SilentBroker()
    client = api_client(buyer)
    try:
        # When the buyer checks out twice (and browses) while it is so
        with broker_pointing_to(silent.url):
            first = post_order(client, [{"sku": sku.code, "quantity": 1}])
            browse = client.get("/api/v1/products/")
            second = post_order(client, [{"sku": sku.code, "quantity": 1}])
            # (the fast path runs on this process's background publisher, off the request)
            assert background.drain()
        attempts = len(silent.accepted)
    finally:
        silent.close()

    # Then both checkouts completed, their notifications wait in the outbox for the relay,
    # and the publisher tried the broker once in the backoff window, not once per request
    assert first.status_code == 201, first.json()
    assert second.status_code == 201, second.json()
    assert browse.status_code == 200
    alias = shard_for_user(buyer.id)
    waiting = OutboxMessage.objects.using(alias).filter(published_at__isnull=True)
    assert waiting.count() == 2
    assert attempts == 1

    # When the real broker is configured again and the backoff is over, the relay sends both
    broker_health.reset()
    assert outbox_relay() == 2
    assert not waiting.exists()
    assert queue_depth(django_settings.NOTIFICATIONS_QUEUE) == 2
    assert_invariants_hold()


def test_the_first_publish_after_the_broker_dropped_the_connection_goes_out(buyer, sku):
    # Given a checkout published through a connection the process keeps
    parts = urlsplit(django_settings.CELERY_BROKER_URL)
    proxy = DroppingProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    client = api_client(buyer)
    alias = shard_for_user(buyer.id)
    try:
        with broker_pointing_to(_via(proxy)):
            assert post_order(client, [{"sku": sku.code, "quantity": 1}]).status_code == 201
            assert background.drain()  # the fast path runs on the background publisher
            assert not OutboxMessage.objects.using(alias).filter(published_at__isnull=True).exists()

            # When the broker side drops that connection, and the buyer checks out again
            proxy.drop()
            again = post_order(client, [{"sku": sku.code, "quantity": 1}])
            assert background.drain()
    finally:
        proxy.close()

    # Then the second notification went out at once on a fresh connection: nothing waits,
    # the circuit stayed closed, and the broker holds both messages
    assert again.status_code == 201, again.json()
    assert not OutboxMessage.objects.using(alias).filter(published_at__isnull=True).exists()
    assert broker_health.available()
    assert proxy.connections == 2
    assert queue_depth(django_settings.NOTIFICATIONS_QUEUE) == 2
    assert_invariants_hold()
