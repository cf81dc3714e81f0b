"""Where alert tests look for notifications: the operators' mail and a real webhook receiver.

A pytest plugin (``pytest_plugins`` in tests/conftest.py), for its fixtures. ``alert_sink``
points every target at this test process: e-mail to Django's local-memory outbox (addressed
to the ``operators`` group's members) and the webhook to a :class:`WebhookReceiver` listening
on a free loopback port; deliveries run in this process (Celery eager, as in the embedded
profile) so the test sees them at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import current_app
from django.contrib.auth.models import Group
from django.core import mail
from django.db.models import F

from shop.models import Alert
from shop.outbox import broker_health
from tests.factories.users import UserFactory

ALL_TARGETS = ["shop.alerts.LogTarget", "shop.alerts.EmailTarget", "shop.alerts.WebhookTarget"]
OPERATOR_EMAILS = ["ops-ann@example.com", "ops-bob@example.com"]


def closed_port_url() -> str:
    """A URL on a loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/alerts"


class WebhookReceiver:
    """A tiny HTTP server on a free loopback port recording the JSON bodies it accepts. It
    answers ``statuses`` in turn, the last one repeating (default: always 200); a body answered
    with anything but a 2xx is not recorded."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses = list(statuses or [200])
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver._lock:
                    statuses = receiver.statuses
                    status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                    if 200 <= status < 300:
                        receiver.received.append(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for body in self.received if body["kind"] == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert_emails(kind: str | None = None) -> list[mail.EmailMessage]:
    """Alert mails in the local-memory outbox (buyers' mails left out), optionally of a kind."""
    found = [m for m in mail.outbox if m.subject.startswith("[shop ")]
    return [m for m in found if kind is None or f"\nAlert {kind} / " in f"\n{m.body}"]


def all_at_once(code: str, *, webhook_url: str, processes: int = 8) -> list[str]:
    """Run ``code`` in ``processes`` separate processes that start it at the same instant (it
    is formatted with ``start``, an epoch time to busy-wait for), each delivering its own alerts
    to the webhook only (no broker); returns the last line each printed."""
    from tests.workers import django_process

    start = time.time() + 4  # all started and connected by then
    running = [
        django_process(
            code.format(start=start),
            CELERY_BROKER_URL="",
            ALERT_TARGETS="shop.alerts.WebhookTarget",
            ALERT_WEBHOOK_URL=webhook_url,
        )
        for _ in range(processes)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in running]
    assert all(process.returncode == 0 for process in running), outputs
    return [output.strip().splitlines()[-1] for output in outputs]


def window_passes(kind: str, key: str | None = None) -> None:
    """Move the last notification of alerts of ``kind`` back beyond the de-duplication window
    (rather than waiting for it)."""
    from django.conf import settings

    alerts = Alert.objects.filter(kind=kind, **({"key": key} if key else {}))
    moved = alerts.update(
        last_notified_at=F("last_notified_at") - timedelta(seconds=settings.ALERT_DEDUP_WINDOW + 1)
    )
    assert moved, f"no {kind} alert to age"


@dataclass
class Sink:
    webhook: WebhookReceiver
    operators: list[str]

    def notified(self, kind: str) -> int:
        """Notifications of ``kind`` received so far; each must have reached both the webhook
        and the operators' mailboxes, and nobody else's."""
        emails, posts = alert_emails(kind), self.webhook.of(kind)
        assert len(emails) == len(posts), (emails, posts)
        for message in emails:
            assert sorted(message.to) == self.operators
        return len(posts)

    def alert(self, kind: str, key: str | None = None) -> Alert:
        return Alert.objects.get(kind=kind, **({"key": key} if key else {}))


@pytest.fixture
def alert_webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def operators_group(db) -> list[str]:
    """Two active operators with addresses; an inactive one, one without an address and a
    staff member outside the group, none of whom may be mailed."""
    group, _ = Group.objects.get_or_create(name="operators")
    for email in OPERATOR_EMAILS:
        UserFactory(username=email.split("@")[0], email=email).groups.add(group)
    UserFactory(username="ops-gone", email="ops-gone@example.com", is_active=False).groups.add(
        group
    )
    UserFactory(username="ops-nomail", email="").groups.add(group)
    UserFactory(username="staff-other", email="staff-other@example.com", is_staff=True)
    return sorted(OPERATOR_EMAILS)


@pytest.fixture
def alert_sink(settings, operators_group, alert_webhook):
    settings.ALERT_TARGETS = ALL_TARGETS
    settings.ALERT_WEBHOOK_URL = alert_webhook.url
    settings.ALERT_EMAILS = []
    settings.ALERT_OPERATORS_GROUP = "operators"
    settings.ALERT_DEDUP_WINDOW = 900
    conf = current_app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = True
    broker_health.reset()
    yield Sink(webhook=alert_webhook, operators=operators_group)
    conf.task_always_eager = eager
    broker_health.reset()
