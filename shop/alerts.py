"""Alerts for operators: raised where something goes wrong, de-duplicated, sent to targets.

:func:`alert_raise` records one occurrence of an alert, named by ``kind`` (what fired:
``breaker_open``, ``dead_letter``…) and ``key`` (which one: the channel, the task…), in one
:class:`~shop.models.Alert` row per (kind, key) on ``default``. It notifies only when nothing
was notified for that (kind, key) within ``ALERT_DEDUP_WINDOW`` seconds; later occurrences are
counted, not sent. The decision is one ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` statement,
so any number of processes raising the same alert at once notify exactly once.

Delivery happens off the caller's path, after its commit: a task on the ``notifications`` queue
hands the alert to every target of ``ALERT_TARGETS`` (a target that fails does not stop the
others and is retried alone). If the broker cannot take the task, the alert is delivered inline
with the targets' short timeouts rather than lost.

:func:`alert_raise` never raises into its caller and costs one statement when it does not
notify: it is meant for failure paths. If even the database cannot be reached, the alert is
logged (at ERROR) and counted (``shop_alerts_total{notified="error"}``), not sent.

Raised inside a transaction on ``default``, the alert belongs to that transaction (in a
savepoint, so a failure of the alert cannot spoil it): rolled back, it never happened.

A target is a class with a ``send(message: AlertMessage) -> bool`` method (False: skipped, e.g.
not configured; an exception: failed), constructed without arguments for each delivery; list
its dotted path in ``ALERT_TARGETS``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db import connections, transaction
from django.dispatch import receiver
from django.utils import timezone
from django.utils.module_loading import import_string

from shop.http import HttpError, http_json
from shop.metrics import ALERT_DELIVERIES, ALERTS
from shop.models import Alert
from shop.outbox import BROKER_ERRORS, broker_health, publisher
from shop.sharding.loops import shard_loop_failed

logger = logging.getLogger(__name__)

SEVERITIES = tuple(Alert.Severity.values)
# Bodies are for people: a multi-megabyte traceback helps nobody and bloats every mail.
MAX_BODY = 10_000
SEVERITY_LOG_LEVELS = {
    Alert.Severity.INFO: logging.INFO,
    Alert.Severity.WARNING: logging.WARNING,
    Alert.Severity.CRITICAL: logging.ERROR,
}


# --- Raising ------------------------------------------------------------------------------------

# One statement decides, under the row's lock: a new (kind, key) notifies; an existing one
# notifies only if its last notification is older than the cutoff. Every occurrence adds one
# to `occurrences`, so that count numbers the occurrences; `notified_occurrences` takes the
# number of the occurrence that notified, and "this occurrence notified" is the two being equal.
# Plain SQL understood by PostgreSQL and SQLite (3.35+) alike.
_UPSERT = """
INSERT INTO shop_alert ({kind}, {key}, {severity}, {subject}, {body}, {occurrences},
    {notifications}, {notified_occurrences}, {first_seen_at}, {last_seen_at}, {last_notified_at})
VALUES (%s, %s, %s, %s, %s, 1, 1, 1, %s, %s, %s)
ON CONFLICT ({kind}, {key}) DO UPDATE SET
    {severity} = excluded.{severity},
    {subject} = excluded.{subject},
    {body} = excluded.{body},
    {occurrences} = shop_alert.{occurrences} + 1,
    {last_seen_at} = excluded.{last_seen_at},
    {notifications} = shop_alert.{notifications}
        + CASE WHEN shop_alert.{last_notified_at} <= %s THEN 1 ELSE 0 END,
    {notified_occurrences} = CASE WHEN shop_alert.{last_notified_at} <= %s
        THEN shop_alert.{occurrences} + 1 ELSE shop_alert.{notified_occurrences} END,
    {last_notified_at} = CASE WHEN shop_alert.{last_notified_at} <= %s
        THEN excluded.{last_notified_at} ELSE shop_alert.{last_notified_at} END
RETURNING {id}, {occurrences}, {notified_occurrences}
"""
_COLUMNS = [field.column for field in Alert._meta.concrete_fields]


def _record(
    *, kind: str, key: str, severity: str, subject: str, body: str
) -> tuple[int, int, bool]:
    """Upsert the occurrence; (alert id, occurrences so far, whether this one notifies)."""
    connection = connections["default"]
    quote = connection.ops.quote_name
    sql = _UPSERT.format(**{name: quote(name) for name in _COLUMNS})
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.ALERT_DEDUP_WINDOW)
    at = connection.ops.adapt_datetimefield_value
    params = [kind, key, severity, subject, body, at(now), at(now), at(now)] + [at(cutoff)] * 3
    # Inside the caller's transaction: a savepoint, so a failure here cannot break it.
    atomic = transaction.atomic(using="default") if connection.in_atomic_block else nullcontext()
    with atomic, connection.cursor() as cursor:
        cursor.execute(sql, params)
        alert_id, occurrences, notified_occurrences = cursor.fetchone()
    return alert_id, occurrences, occurrences == notified_occurrences


def alert_raise(
    *, kind: str, key: str, subject: str, body: str = "", severity: str = "warning"
) -> bool:
    """Record an occurrence of alert (kind, key) and notify the targets unless it was notified
    within ALERT_DEDUP_WINDOW. Returns True if this occurrence notified (delivery follows after
    the caller's commit). Never raises."""
    if severity not in SEVERITIES:
        logger.warning("alert %s %s: unknown severity %r, using warning", kind, key, severity)
        severity = Alert.Severity.WARNING
    subject = " ".join(subject.split())[:300]  # one line, whatever the caller built
    try:
        alert_id, occurrences, notified = _record(
            kind=kind[:40], key=key[:200], severity=severity, subject=subject, body=body[:MAX_BODY]
        )
        if notified:
            # robust: the caller's work has committed; a delivery problem is not its error.
            transaction.on_commit(partial(_dispatch, alert_id), using="default", robust=True)
    except Exception as exc:  # noqa: BLE001 - an alert must never break the failure path raising it
        ALERTS.labels(kind, "error").inc()
        logger.error(
            "ALERT NOT RECORDED (%s: %s) [%s] %s %s: %s\n%s",
            type(exc).__name__,
            exc,
            severity,
            kind,
            key,
            subject,
            body,
        )
        return False
    ALERTS.labels(kind, "true" if notified else "false").inc()
    if not notified:
        logger.info("alert %s %s: occurrence %d, already notified: %s", kind, key, occurrences,
                    subject)  # fmt: skip
    return notified


# --- Delivering ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertMessage:
    """What targets receive: the alert as of its latest occurrence."""

    id: int
    kind: str
    key: str
    severity: str
    subject: str
    body: str
    occurrences: int
    first_seen: datetime
    last_seen: datetime

    @classmethod
    def of(cls, alert: Alert) -> AlertMessage:
        return cls(
            id=alert.id,
            kind=alert.kind,
            key=alert.key,
            severity=alert.severity,
            subject=alert.subject,
            body=alert.body,
            occurrences=alert.occurrences,
            first_seen=alert.first_seen_at,
            last_seen=alert.last_seen_at,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "severity": self.severity,
            "subject": self.subject,
            "body": self.body,
            "occurrences": self.occurrences,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
        }

    def text(self) -> str:
        """The body, then where the alert stands (for mail and logs)."""
        window = settings.ALERT_DEDUP_WINDOW
        footer = (
            f"Alert {self.kind} / {self.key} ({self.severity}): {self.occurrences} "
            f"occurrence(s) since {self.first_seen:%Y-%m-%d %H:%M:%S %Z}, latest "
            f"{self.last_seen:%Y-%m-%d %H:%M:%S %Z}. Further occurrences within {window} s of "
            "this notification are counted (admin: Platform → Alerts), not sent."
        )
        return f"{self.body}\n\n{footer}" if self.body else footer


class LogTarget:
    """The alert in the log, at WARNING (ERROR when critical): always there, costs nothing."""

    def send(self, message: AlertMessage) -> bool:
        level = SEVERITY_LOG_LEVELS.get(message.severity, logging.WARNING)
        logger.log(level, "ALERT [%s] %s: %s\n%s", message.severity, message.kind,
                   message.subject, message.text())  # fmt: skip
        return True


class EmailTarget:
    """Mail to the active members of ALERT_OPERATORS_GROUP with an address, and to
    ALERT_EMAILS. Skipped when that is nobody."""

    def recipients(self) -> list[str]:
        members = (
            get_user_model()
            .objects.filter(is_active=True, groups__name=settings.ALERT_OPERATORS_GROUP)
            .exclude(email="")
            .values_list("email", flat=True)
        )
        return sorted({*members, *settings.ALERT_EMAILS})

    def send(self, message: AlertMessage) -> bool:
        recipients = self.recipients()
        if not recipients:
            return False
        connection = get_connection(timeout=settings.ALERT_SEND_TIMEOUT)
        EmailMessage(
            subject=f"[shop {message.severity}] {message.subject}",
            body=message.text(),
            to=recipients,
            connection=connection,
        ).send()
        return True


class WebhookRejected(HttpError):
    """The webhook answered, but not with a 2xx."""


class WebhookTarget:
    """POST ``{kind, key, severity, subject, body, occurrences, first_seen, last_seen}`` as
    JSON to ALERT_WEBHOOK_URL (skipped when empty); any answer but a 2xx is a failure."""

    def send(self, message: AlertMessage) -> bool:
        url = settings.ALERT_WEBHOOK_URL
        if not url:
            return False
        response = http_json(
            "POST",
            url,
            message.as_json(),
            connect_timeout=settings.ALERT_CONNECT_TIMEOUT,
            read_timeout=settings.ALERT_SEND_TIMEOUT,
            headers={"User-Agent": "shop-alerts"},
        )
        if not 200 <= response.status < 300:
            raise WebhookRejected(f"POST {url}: HTTP {response.status}")
        return True


def _label(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def alert_deliver(*, alert_id: int, targets: list[str] | None = None) -> list[str]:
    """Hand the alert, as it stands now, to each target (default: all of ALERT_TARGETS).
    Returns the targets that failed; one failing does not stop the others. Delivery is at
    least once: a redelivered task sends again."""
    alert = Alert.objects.filter(id=alert_id).first()
    if alert is None:
        return []
    message = AlertMessage.of(alert)
    failed = []
    for path in settings.ALERT_TARGETS if targets is None else targets:
        try:
            sent = import_string(path)().send(message)
        except Exception as exc:  # noqa: BLE001 - one broken target must not stop the others
            failed.append(path)
            ALERT_DELIVERIES.labels(_label(path), "failed").inc()
            logger.warning("alert %s %s: target %s failed: %s: %s", alert.kind, alert.key,
                           path, type(exc).__name__, exc)  # fmt: skip
        else:
            ALERT_DELIVERIES.labels(_label(path), "sent" if sent else "skipped").inc()
    return failed


def _dispatch(alert_id: int) -> None:
    """After commit: queue the delivery, or deliver now if the broker cannot take it."""
    from shop.tasks import alert_deliver as deliver_task

    if broker_health.available():
        try:
            publisher.publish(
                deliver_task, kwargs={"alert_id": alert_id}, queue=settings.NOTIFICATIONS_QUEUE
            )
            return
        except BROKER_ERRORS as exc:
            broker_health.mark_down()
            logger.warning("alert %s: broker unavailable (%s); delivering inline", alert_id, exc)
    alert_deliver(alert_id=alert_id)


@receiver(shard_loop_failed, dispatch_uid="shop-alerts-shard-loop")
def _shard_loop_alert(
    sender: str, *, loop: str, alias: str, error: BaseException, **_: Any
) -> None:
    """A background loop skipped a dead shard: one alert per (loop, shard), de-duplicated."""
    alert_raise(
        kind="shard_loop",
        key=f"{loop}:{alias}",
        severity="critical",
        subject=f"{loop} skipped shard {alias}: its database failed",
        body=f"{type(error).__name__}: {error}\n\nThe other shards were done; {alias} waits "
        "for the next run.",
    )
