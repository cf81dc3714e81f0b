"""The transactional outbox: tasks published only after, and always after, the change commits.

:func:`outbox_enqueue` writes an :class:`~shop.models.OutboxMessage` in the caller's shard
transaction. After the commit a fast path publishes it at once; :func:`outbox_relay` (beat,
every OUTBOX_RELAY_SECONDS) sweeps whatever the fast path could not publish, taking rows with
``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent relays never publish the same row at the same
time; it leaves rows younger than OUTBOX_RELAY_GRACE to the fast path. A broker outage
therefore delays tasks but never loses them, and a rolled-back transaction publishes nothing.

The fast path runs off the request path: the commit hands the message to this process's
:data:`background` publisher thread (a bounded queue, OUTBOX_PUBLISH_QUEUE), which publishes
and records a batch with one UPDATE per shard. The request neither waits on the broker nor
writes the bookkeeping. A full queue, a dead process or an open circuit leaves the row to the
relay; the row itself was durable with the change, so nothing is lost. In the embedded
profile (tasks run eagerly, no broker) the fast path stays inline.
Delivery is at least once: a publish whose bookkeeping fails is published again, and every
task receives ``message_id`` ("<alias>:<row id>") to deduplicate with :func:`consume_once`.
Each row keeps the log context of the change that wrote it (request, user, order ids) and is
published with it, so the task logs with the original request id whoever publishes it.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from kombu.exceptions import KombuError

from shop.logs import CELERY_HEADER, log_context, log_context_carry
from shop.models import OutboxMessage, ProcessedMessage
from shop.rowwrites import RowWrite, insert_sql, inserted, rows_write
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
    write = outbox_write(
        using=using, user_id=user_id, task=task, kwargs=kwargs, queue=queue, countdown=countdown
    )
    rows_write(using, [write])
    return write.message


@dataclass
class OutboxWrite(RowWrite):
    message: OutboxMessage | None = None


def outbox_write(
    *,
    using: str,
    user_id: int,
    task: str,
    kwargs: dict[str, Any],
    queue: str,
    countdown: int = 0,
) -> OutboxWrite:
    """:func:`outbox_enqueue` as a row the caller writes in its own statement
    (``shop.rowwrites``), inside the transaction (on ``using``) of the change that causes it.
    Once written, the message is published after that transaction commits."""
    connection = connections[using]
    if not connection.in_atomic_block:
        raise RuntimeError("outbox_enqueue must run inside the transaction of the change")
    now = timezone.now()
    message = OutboxMessage(
        user_id=user_id,
        task=task,
        kwargs=kwargs,
        queue=queue,
        countdown=countdown,
        available_at=now,
        created_at=now,
        context=log_context_carry(),
    )

    def written(values: list[Any]) -> None:
        message.id = values[0]
        inserted(message, using=using)
        # robust: the change has committed; a failing fast path must not turn it into an
        # error for the caller (the relay publishes what the fast path could not).
        transaction.on_commit(lambda: outbox_publish(using=using, message=message), using=using,
                              robust=True)  # fmt: skip

    sql, params = insert_sql(connection, [message])
    return OutboxWrite(sql, params, returning="id", done=written, message=message)


def _locked(using: str):
    queryset = OutboxMessage.objects.using(using).filter(published_at__isnull=True)
    if connections[using].vendor == "postgresql":
        return queryset.select_for_update(skip_locked=True)
    return queryset  # SQLite: one writer at a time anyway


def _send(using: str, message: OutboxMessage) -> bool:
    """Publish one message; on a broker error open the circuit and record the attempt (one
    UPDATE) and return False. The caller records a success."""
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
    return True


def _mark_published(using: str, ids: list[int]) -> None:
    OutboxMessage.objects.using(using).filter(id__in=ids, published_at__isnull=True).update(
        published_at=timezone.now(), attempts=F("attempts") + 1
    )


def _publish(using: str, message: OutboxMessage) -> bool:
    """Publish one message and record the outcome (one UPDATE). The row must be ours: locked
    by the relay, or fresh from this process's commit (the relay leaves those alone for
    OUTBOX_RELAY_GRACE seconds)."""
    if not _send(using, message):
        return False
    _mark_published(using, [message.id])
    return True


class _BackgroundPublisher:
    """This process's fast path: one daemon thread fed by a bounded queue of committed
    messages. It publishes them in arrival order and records each batch's success with one
    UPDATE per shard, on its own database connections (closed when it has been idle for
    OUTBOX_PUBLISHER_IDLE seconds). It never blocks the thread that hands it a message: when
    the queue is full the message is left to the relay, like one written while the broker is
    down. Started lazily per process (a forked worker starts its own)."""

    BATCH = 100  # messages recorded per UPDATE at most

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._queue: queue.Queue[tuple[str, OutboxMessage] | None] = queue.Queue()

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue = queue.Queue(maxsize=settings.OUTBOX_PUBLISH_QUEUE)
            thread = threading.Thread(
                target=self._run, args=(self._queue,), name="outbox-publisher", daemon=True
            )
            thread.start()
            self._pid = os.getpid()

    def submit(self, using: str, message: OutboxMessage) -> bool:
        """Hand a committed message to the thread; False if the queue is full (the relay
        publishes it after OUTBOX_RELAY_GRACE)."""
        self._ensure_started()
        try:
            self._queue.put_nowait((using, message))
        except queue.Full:
            logger.warning("outbox: publisher queue full, %s waits for the relay", message)
            return False
        return True

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every message handed over so far is published or left to the relay
        (tests, and a worker shutting down); False if that took longer than ``timeout``."""
        if self._pid != os.getpid():
            return True
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout)

    def close_connections(self, timeout: float = 10.0) -> bool:
        """Publish what was handed over, then close the thread's database connections (a
        database about to be dropped, e.g. at the end of a test session)."""
        if self._pid != os.getpid():
            return True
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return False
        return self.drain(timeout)

    def _run(self, jobs: queue.Queue[tuple[str, OutboxMessage] | None]) -> None:
        while True:
            try:
                first = jobs.get(timeout=settings.OUTBOX_PUBLISHER_IDLE)
            except queue.Empty:
                connections.close_all()  # this thread's own connections only
                continue
            if first is None:  # close_connections()
                connections.close_all()
                jobs.task_done()
                continue
            batch, close = [first], False
            while len(batch) < self.BATCH:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:  # close_connections(), once this batch is done
                    jobs.task_done()
                    close = True
                    break
                batch.append(job)
            try:
                self._publish_batch(batch)
            except Exception:
                # The rows stay unpublished and the relay sends them; this thread lives on.
                logger.exception("outbox: background publish failed; the relay will retry")
                connections.close_all()
            finally:
                if close:
                    connections.close_all()
                for _ in batch:
                    jobs.task_done()

    @staticmethod
    def _publish_batch(batch: list[tuple[str, OutboxMessage]]) -> None:
        sent: dict[str, list[int]] = {}
        for using, message in batch:
            if not broker_health.available():
                break  # the rest waits for the relay, like the fast path of a request
            with log_context(**(message.context or {})):
                if _send(using, message):
                    sent.setdefault(using, []).append(message.id)
        for using, ids in sent.items():
            try:
                _mark_published(using, ids)
            except DatabaseError:
                # Published but not recorded: the relay sends them again (consumers dedupe).
                logger.exception("outbox: could not record %s published message(s)", len(ids))
                connections[using].close()


background = _BackgroundPublisher()
atexit.register(background.close_connections, 2.0)


def outbox_publish(*, using: str, message: OutboxMessage) -> bool:
    """Fast path right after the commit that wrote ``message``: hand it to this process's
    background publisher if the broker seems up (inline when tasks run eagerly). No lock and
    no extra read: the relay does not touch rows this fresh. True if it was taken (or, inline,
    published)."""
    if not broker_health.available():
        return False
    if current_app.conf.task_always_eager:
        return _publish(using, message)
    return background.submit(using, message)


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
