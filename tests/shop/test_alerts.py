"""The alert notifier (shop.alerts): once per window per (kind, key), to every target, never
raising into its caller, exactly once across processes."""

from __future__ import annotations

import time

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections, transaction
from prometheus_client import REGISTRY

from shop.alerts import alert_raise
from shop.models import Alert
from shop.outbox import broker_health
from tests.alerting import (
    ALL_TARGETS,
    WebhookReceiver,
    alert_emails,
    all_at_once,
    closed_port_url,
    window_passes,
)
from tests.shop.test_database_down import _default_database_down
from tests.workers import StallingSMTPServer, Worker, purge_queues, wait_for

ALL = "__all__"
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1//"


def _counted(kind: str, notified: str) -> float:
    return REGISTRY.get_sample_value("shop_alerts_total", {"kind": kind, "notified": notified}) or 0


def _deliveries(target: str, outcome: str) -> float:
    labels = {"target": target, "outcome": outcome}
    return REGISTRY.get_sample_value("shop_alert_deliveries_total", labels) or 0


def _raise(**overrides) -> bool:
    fields = {"kind": "test", "key": "k1", "subject": "Something broke", "body": "Details."}
    return alert_raise(**{**fields, **overrides})


@pytest.mark.django_db(transaction=True)
def test_an_alert_notifies_once_per_window_and_counts_every_occurrence(alert_sink):
    # When an alert is raised for the first time
    assert _raise(severity="critical") is True

    # Then the operators (only they) get one mail and the webhook one JSON document
    assert alert_sink.notified("test") == 1
    email = alert_emails("test")[0]
    assert email.subject == "[shop critical] Something broke"
    assert "Details." in email.body and "1 occurrence(s)" in email.body
    posted = alert_sink.webhook.of("test")[0]
    assert set(posted) == {"kind", "key", "severity", "subject", "body", "occurrences",
                           "first_seen", "last_seen"}  # fmt: skip
    assert (posted["key"], posted["severity"], posted["occurrences"]) == ("k1", "critical", 1)

    # When it happens again within the window
    notified_before = _counted("test", "false")
    assert _raise(subject="Something broke again") is False

    # Then nothing more is sent, but the occurrence is counted and the row is up to date
    assert alert_sink.notified("test") == 1
    alert = alert_sink.alert("test")
    assert (alert.occurrences, alert.notifications) == (2, 1)
    assert alert.subject == "Something broke again"
    assert _counted("test", "false") == notified_before + 1

    # When the window has passed, the next occurrence notifies again, with the full count
    window_passes("test")
    assert _raise() is True
    assert alert_sink.notified("test") == 2
    assert alert_sink.webhook.of("test")[-1]["occurrences"] == 3
    alert = alert_sink.alert("test")
    assert (alert.occurrences, alert.notifications, alert.notified_occurrences) == (3, 2, 3)


@pytest.mark.django_db(transaction=True)
def test_each_kind_and_key_has_its_own_window(alert_sink):
    assert _raise(key="alpha") is True
    assert _raise(key="beta") is True
    assert _raise(kind="other", key="alpha") is True
    assert _raise(key="alpha") is False
    assert alert_sink.notified("test") == 2 and alert_sink.notified("other") == 1
    assert Alert.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_extra_addresses_are_mailed_too(alert_sink, settings):
    settings.ALERT_EMAILS = ["pager@example.com", alert_sink.operators[0]]
    _raise()
    (email,) = alert_emails()
    assert sorted(email.to) == sorted([*alert_sink.operators, "pager@example.com"])


@pytest.mark.django_db(transaction=True)
def test_a_failing_target_does_not_stop_the_others_nor_raise_into_the_caller(alert_sink, settings):
    # Given a webhook nobody listens to, listed before the e-mail target
    settings.ALERT_WEBHOOK_URL = closed_port_url()
    settings.ALERT_TARGETS = list(reversed(ALL_TARGETS))
    failed = _deliveries("WebhookTarget", "failed")

    # When an alert is raised, the caller just gets its answer
    assert _raise() is True

    # Then the operators are mailed all the same, and the failure is counted
    assert len(alert_emails("test")) == 1
    assert _deliveries("WebhookTarget", "failed") == failed + 1
    assert _deliveries("EmailTarget", "sent") >= 1


@pytest.mark.django_db(transaction=True)
def test_a_webhook_answering_an_error_is_a_failed_delivery(alert_sink):
    alert_sink.webhook.statuses = [500]
    failed = _deliveries("WebhookTarget", "failed")
    assert _raise() is True
    assert _deliveries("WebhookTarget", "failed") == failed + 1
    assert len(alert_emails("test")) == 1


@pytest.mark.django_db(transaction=True)
def test_targets_with_nobody_to_tell_are_skipped(alert_sink, settings):
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_OPERATORS_GROUP = "nobody-here"
    skipped = _deliveries("EmailTarget", "skipped"), _deliveries("WebhookTarget", "skipped")
    assert _raise() is True
    assert not mail.outbox and not alert_sink.webhook.received
    assert _deliveries("EmailTarget", "skipped") == skipped[0] + 1
    assert _deliveries("WebhookTarget", "skipped") == skipped[1] + 1


@pytest.mark.django_db(transaction=True)
def test_an_alert_raised_in_a_rolled_back_transaction_never_happened(alert_sink):
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _raise() is True
        raise RuntimeError("the caller's change failed")
    assert not Alert.objects.exists()
    assert alert_sink.notified("test") == 0


@pytest.mark.django_db(transaction=True)
def test_an_alert_inside_a_transaction_is_delivered_after_its_commit(alert_sink):
    with transaction.atomic():
        assert _raise() is True
        assert alert_sink.notified("test") == 0
    assert alert_sink.notified("test") == 1


@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_an_unreachable_database_is_logged_and_counted_never_raised(alert_sink, caplog):
    errors = _counted("test", "error")
    connections.close_all()
    with _default_database_down():
        started = time.monotonic()
        assert _raise(subject="Seen in the log") is False
    assert time.monotonic() - started < 10  # the connect timeout, not a hang
    assert _counted("test", "error") == errors + 1
    assert "ALERT NOT RECORDED" in caplog.text and "Seen in the log" in caplog.text
    assert alert_sink.notified("test") == 0


@pytest.mark.django_db
def test_operators_see_alerts_read_only_in_the_admin(admin_client):
    Alert.objects.create(
        kind="breaker_open", key="channel:alpha", severity="warning", subject="opened",
        first_seen_at="2030-01-01T00:00Z", last_seen_at="2030-01-01T00:00Z",
        last_notified_at="2030-01-01T00:00Z",
    )  # fmt: skip
    listing = admin_client.get("/admin/shop/alert/?kind=breaker_open&q=alpha")
    assert listing.status_code == 200 and "channel:alpha" in listing.content.decode()
    assert admin_client.get("/admin/shop/alert/?severity=critical").status_code == 200
    assert admin_client.get("/admin/shop/alert/add/").status_code == 403
    alert = Alert.objects.get()
    page = admin_client.get(f"/admin/shop/alert/{alert.id}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()


# --- Delivery through the broker ------------------------------------------------------------------


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_alert_is_delivered_inline(
    operators_group, alert_webhook, settings
):
    from tests.workers import broker_pointing_to

    settings.ALERT_TARGETS = ALL_TARGETS
    settings.ALERT_WEBHOOK_URL = alert_webhook.url
    broker_health.reset()
    try:
        with broker_pointing_to(DEAD_BROKER):
            assert _raise() is True
        # Delivered here and now: nothing waits in a queue that cannot be reached
        assert len(alert_webhook.of("test")) == 1
        assert [sorted(m.to) for m in alert_emails("test")] == [operators_group]
        assert not broker_health.available()  # the next alert does not wait for the broker
    finally:
        broker_health.reset()


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_delivers_the_alert_and_retries_only_the_target_that_failed(operators_group):
    # Given a webhook that fails twice, then works, and a real mail server
    purge_queues()
    receiver = WebhookReceiver(statuses=[503, 503, 200])
    smtp = StallingSMTPServer()
    worker = Worker(
        ALERT_WEBHOOK_URL=receiver.url,
        ALERT_DELIVERY_RETRY_DELAY="0",
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp.port),
    ).start()
    try:
        # When an alert is raised here (it is queued, not delivered in this process)
        assert _raise() is True
        assert not receiver.received and not smtp.messages

        # Then the worker mails the operators once and gets the webhook through on a retry
        wait_for(lambda: receiver.of("test"))
        time.sleep(0.5)  # a wrongly repeated mail would show up by now
    finally:
        worker.stop()
        receiver.close()
        smtp.close()
    assert len(receiver.of("test")) == 1
    assert len(smtp.messages) == 1
    assert all(address in smtp.messages[0] for address in operators_group)


# --- Many processes at once -----------------------------------------------------------------------

RAISE_AT = """
import time
from shop.alerts import alert_raise
while time.time() < {start}:
    time.sleep(0.001)
notified = alert_raise(kind="test", key="storm", subject="Everyone saw it at once")
print("NOTIFIED" if notified else "COUNTED", flush=True)
"""


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_eight_processes_raising_the_same_alert_at_once_notify_exactly_once(
    operators_group, alert_webhook
):
    # Given eight processes (no broker: each delivers what it notifies itself)
    # When they all raise the same alert in the same instant
    results = all_at_once(RAISE_AT, webhook_url=alert_webhook.url)

    # Then exactly one of them notified, and every occurrence is counted
    assert sorted(results) == ["COUNTED"] * 7 + ["NOTIFIED"], results
    alert = Alert.objects.get(kind="test", key="storm")
    assert (alert.occurrences, alert.notifications) == (8, 1)
    assert len(alert_webhook.of("test")) == 1
    call_command("audit_invariants")
