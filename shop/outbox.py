"""The transactional outbox: tasks published only after, and always after, the change commits.

:func:`outbox_enqueue` writes an :class:`~shop.models.OutboxMessage` in the caller's shard
transaction. After the commit a fast path publishes it at once; :func:`outbox_relay` (beat,
every OUTBOX_RELAY_SECONDS) sweeps whatever the fast path could not publish, taking rows with
``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent relays never publish the same row at the same
time; it leaves rows younger than OUTBOX_RELAY_GRACE to the fast path. A broker outage
therefore delays tasks but never loses them, and a rolled-back transaction publishes nothing.
Delivery is at least once: a publish whose bookkeeping fails is published again, and every
task receives ``message_id`` ("<alias>:<row id>") to deduplicate with :func:`consume_once`.
Each row keeps the log context of the change that wrote it (request, user, order ids) and is
published with it, so the task logs with the original request id whoever publishes it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from kombu.exceptions import KombuError

from shop.logs import CELERY_HEADER, log_context_carry
from shop.models import OutboxMessage, ProcessedMessage
from shop.sharding.loops import shards_each

logger = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, OSError)


class _BrokerHealth:
    """This process's circuit around the broker: after a failed publish the fast path (and an
    alert's queued delivery) is skipped for OUTBOX_BROKER_BACKOFF seconds, so requests do not
    wait on a dead broker again and again (the relay publishes what waits)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_until = 0.0

    def available(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self) -> None:
        with self._lock:
            self.down_until = time.monotonic() + settings.OUTBOX_BROKER_BACKOFF

    def reset(self) -> None:
        with self._lock:
            self.down_until = 0.0


broker_health = _BrokerHealth()


class _Publisher:
    """This process's way to the broker for the outbox and alert deliveries (one connection a
    thread, kept between publishes): no request waits on a dead broker.

    * the connection is made with a connect timeout of OUTBOX_PUBLISH_CONNECT_TIMEOUT (a few
      hundred ms; the TCP connect and the AMQP handshake) and no connection retries;
    * publisher confirms: a publish returns once the broker has taken the message, within
      OUTBOX_PUBLISH_TIMEOUT — a message written into a dead socket is an error, not a loss;
    * after a connection error the connection is dropped; if it was one kept from before (the
      broker restarted, a firewall cut it) the publish is tried once more on a fresh one, so
      the first publish after the broker returns goes out.

    The circuit around it is :data:`broker_health` (callers skip publishing while it is open).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @staticmethod
    def _url() -> str:
        return current_app.conf.broker_write_url or current_app.conf.broker_url

    def _connection(self) -> tuple[Any, bool]:
        """(this thread's connection, whether it was kept from an earlier publish)."""
        connection = getattr(self._local, "connection", None)
        # Not one inherited through a fork (a prefork worker's child): its socket is shared.
        if connection is not None and self._local.key == (os.getpid(), self._url()):
            return connection, True
        self.reset()
        connection = current_app.connection_for_write(
            connect_timeout=settings.OUTBOX_PUBLISH_CONNECT_TIMEOUT,
            transport_options={"confirm_publish": True, "max_retries": 0},
        )
        self._local.connection, self._local.key = connection, (os.getpid(), self._url())
        return connection, False

    def reset(self) -> None:
        """Drop this thread's connection (the next publish opens a fresh one)."""
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            try:
                connection.release()
            except BROKER_ERRORS as exc:
                logger.debug("publisher: closing a broken connection: %s", exc)

    def publish(self, task: Any, **options: Any) -> None:
        """``task.apply_async(**options)`` on this process's connection; raises a broker
        error (after at most one fresh retry, see the class) if the broker did not take it."""
        if current_app.conf.task_always_eager:  # embedded profile: runs here, no broker
            task.apply_async(**options)
            return
        timeout = settings.OUTBOX_PUBLISH_TIMEOUT
        while True:
            connection, kept = self._connection()
            try:
                task.apply_async(
                    producer=current_app.amqp.Producer(connection),
                    retry=False,
                    timeout=timeout,
                    confirm_timeout=timeout,
                    **options,
                )
                return
            except BROKER_ERRORS:
                self.reset()
                if not kept:
                    raise
                logger.info("publisher: a kept broker connection failed; trying a fresh one")


publisher = _Publisher()


def outbox_enqueue(
    *,
    using: str,
    user_id: int,
    task: str,
    kwargs: dict[str, Any],
    queue: str,
    countdown: int = 0,
) -> OutboxMessage:
    """Record ``task(**kwargs, message_id=…)`` for publication once this transaction commits.

    Must run inside the transaction (on ``using``) of the change that causes it.
    """
    if not connections[using].in_atomic_block:
        raise RuntimeError("outbox_enqueue must run inside the transaction of the change")
    message = OutboxMessage.objects.using(using).create(
        user_id=user_id,
        task=task,
        kwargs=kwargs,
        queue=queue,
        countdown=countdown,
        available_at=timezone.now(),
        context=log_context_carry(),
    )
    # robust: the change has committed; a failing fast path must not turn it into an error
    # for the caller (the relay publishes what the fast path could not).
    transaction.on_commit(lambda: outbox_publish(using=using, message=message), using=using,
                          robust=True)  # fmt: skip
    return message


def _locked(using: str):
    queryset = OutboxMessage.objects.using(using).filter(published_at__isnull=True)
    if connections[using].vendor == "postgresql":
        return queryset.select_for_update(skip_locked=True)
    return queryset  # SQLite: one writer at a time anyway


def _publish(using: str, message: OutboxMessage) -> bool:
    """Publish one message and record the outcome (one UPDATE). The row must be ours: locked
    by the relay, or fresh from this process's commit (the relay leaves those alone for
    OUTBOX_RELAY_GRACE seconds)."""
    task = import_string(message.task)  # task names are their dotted paths
    kwargs = {**message.kwargs, "message_id": f"{using}:{message.id}"}
    try:
        publisher.publish(
            task,
            kwargs=kwargs,
            queue=message.queue,
            countdown=message.countdown or None,
            # The writer's context, not the publisher's (the relay may run anywhere, later).
            headers={CELERY_HEADER: message.context or {}},
        )
    except BROKER_ERRORS as exc:
        broker_health.mark_down()
        OutboxMessage.objects.using(using).filter(id=message.id).update(
            attempts=F("attempts") + 1, last_error=f"{type(exc).__name__}: {exc}"[:2000]
        )
        logger.warning("outbox: broker unavailable, %s waits for the relay: %s", message, exc)
        return False
    except Exception:
        # Eager mode (embedded profile) runs the task right here; its failure is the task's
        # business (it has its own dead-letter path), not a reason to publish it again.
        if not current_app.conf.task_always_eager:
            raise
        logger.exception("outbox: eager task %s failed", message)
    OutboxMessage.objects.using(using).filter(id=message.id, published_at__isnull=True).update(
        published_at=timezone.now(), attempts=F("attempts") + 1
    )
    return True


def outbox_publish(*, using: str, message: OutboxMessage) -> bool:
    """Fast path right after the commit that wrote ``message``: publish it now if the broker
    seems up. No lock and no extra read: the relay does not touch rows this fresh."""
    if not broker_health.available():
        return False
    return _publish(using, message)


def outbox_relay(*, batch_size: int | None = None) -> int:
    """Publish every due, unpublished message on every shard. Returns how many went out. A
    shard whose database fails is skipped and reported (:func:`shards_each`); the others'
    messages still go out."""
    batch_size = batch_size or settings.OUTBOX_RELAY_BATCH

    def relay_shard(alias: str) -> int:
        published = 0
        while True:
            with transaction.atomic(using=alias):
                cutoff = timezone.now() - timedelta(seconds=settings.OUTBOX_RELAY_GRACE)
                due = list(
                    _locked(alias).filter(available_at__lte=cutoff).order_by("id")[:batch_size]
                )
                sent = 0
                for message in due:
                    if not _publish(alias, message):
                        break
                    sent += 1
            published += sent
            if sent < batch_size:
                return published

    published = sum(shards_each("outbox_relay", relay_shard).values())
    if published:
        broker_health.reset()
    return published


def outbox_backlog() -> dict[str, int]:
    """Unpublished messages per shard that answered (for operators and tests)."""
    return shards_each(
        "outbox_backlog",
        lambda alias: OutboxMessage.objects.using(alias).filter(published_at__isnull=True).count(),
    )


def outbox_purge_published(*, older_than: timedelta) -> int:
    """Delete published messages older than ``older_than`` on every shard that answers."""
    cutoff = timezone.now() - older_than
    return sum(
        shards_each(
            "outbox_purge_published",
            lambda alias: (
                OutboxMessage.objects.using(alias)
                .filter(published_at__isnull=False, published_at__lt=cutoff)
                .delete()[0]
            ),
        ).values()
    )


def consume_once(*, using: str, user_id: int, consumer: str, message_id: str | None) -> bool:
    """Record that ``consumer`` applied ``message_id``; False if it already had.

    Call inside the transaction of the consumer's effect, so the record and the effect commit
    or roll back together. Without a message id (a direct call) it always proceeds.
    """
    if not message_id:
        return True
    try:
        with transaction.atomic(using=using):
            ProcessedMessage.objects.using(using).create(
                user_id=user_id, consumer=consumer, message_id=message_id
            )
    except IntegrityError:
        return False
    return True
