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
    """This process's view of the broker: after a failed publish the fast path is skipped for
    OUTBOX_BROKER_BACKOFF seconds so checkouts do not wait on a dead broker (the relay retries)."""

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
        task.apply_async(
            kwargs=kwargs,
            queue=message.queue,
            countdown=message.countdown or None,
            retry=False,
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
