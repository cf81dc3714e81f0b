"""Idempotency keys (``Idempotency-Key`` header), kept on the buyer's shard.

The first request with a key inserts an in-flight record owned by a random token for
IDEMPOTENCY_LOCK_TTL seconds. The effect's own transaction completes the record with the
response to replay (:meth:`IdempotencyClaim.complete`), so there is never an effect without
its record nor a record claiming an effect that rolled back. Then:

* same key, same request, completed ⇒ the first response (status and body) is replayed;
* same key, other method, path or body ⇒ 422 ``idempotency_mismatch``;
* same key while the first is in flight ⇒ 409 ``idempotency_conflict`` with ``Retry-After``;
* an owner that died leaves its record in flight until ``locked_until``; the next request
  takes it over, and the former owner can no longer complete or release it (token check).

Everything lives in the database, so the guarantee holds when Redis is down. Records are
deleted IDEMPOTENCY_RECORD_TTL after creation (:func:`idempotency_cleanup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from shop.errors import ShopError, ValidationFailed
from shop.models import IdempotencyRecord
from shop.rowwrites import RowWrite, insert_sql, rows_write, update_sql
from shop.sharding.loops import shards_each

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
HEADER_META = "HTTP_IDEMPOTENCY_KEY"  # the same header in request.META
REPLAY_HEADER = "Idempotent-Replayed"


class IdempotencyKeyRequired(ShopError):
    code = "idempotency_key_required"
    http_status = 400
    default_message = "This request needs an Idempotency-Key header (1-255 printable characters)."


class IdempotencyConflict(ShopError):
    code = "idempotency_conflict"
    http_status = 409
    default_message = "A request with this Idempotency-Key is still in progress."


class IdempotencyMismatch(ShopError):
    code = "idempotency_mismatch"
    http_status = 422
    default_message = "This Idempotency-Key was used with different parameters."


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any

    def response(self) -> Response:
        return Response(self.body, status=self.status, headers={REPLAY_HEADER: "true"})


@dataclass
class IdempotencyClaim:
    """Ownership of an in-flight key. Complete it inside the effect's transaction."""

    using: str
    user_id: int
    record_id: int
    token: str
    resource_id: str = ""
    finished: bool = field(default=False)

    def _mine(self):
        return IdempotencyRecord.objects.using(self.using).filter(
            id=self.record_id,
            owner_token=self.token,
            status=IdempotencyRecord.Status.IN_FLIGHT,
        )

    def attach(self, resource_id: str) -> None:
        """Record what this request created, inside the transaction that creates it. A retry
        that takes the key over after a crash finds it here instead of creating another."""
        rows_write(self.using, [self.attachment(resource_id)])

    def attachment(self, resource_id: str) -> RowWrite:
        """:meth:`attach` as a row written in the statement that creates the resource
        (``shop.rowwrites``); it raises IdempotencyConflict there if the key was taken over."""

        def written(values: list[Any]) -> None:
            if not values:
                raise IdempotencyConflict("This Idempotency-Key was taken over by a later request.")
            self.resource_id = resource_id

        sql, params = update_sql(
            connections[self.using], IdempotencyRecord, {"resource_id": resource_id},
            {"id": self.record_id, "owner_token": self.token,
             "status": IdempotencyRecord.Status.IN_FLIGHT},
        )  # fmt: skip
        return RowWrite(sql, params, done=written)

    def resume_or_start(self, start: Callable[[Callable[[str], None]], object]) -> str:
        """The id of the resource this key's effect created, which is never created twice.

        A request that took the key over from an owner that died after creating its resource
        (``resource_id`` set) gets that id and ``start`` does not run. Otherwise
        ``start(attach)`` runs the effect and must call ``attach(resource_id)`` inside the
        transaction that creates the resource. Whatever ``start`` raises propagates."""
        if not self.resource_id:
            start(self.attach)
            if not self.resource_id:
                raise RuntimeError("start() returned without attaching what it created")
        return self.resource_id

    def complete(self, *, status: int, body: Any) -> None:
        """Store the response to replay. Must run in the effect's transaction on ``using``;
        raises IdempotencyConflict (rolling the effect back) if the key was taken over."""
        rows_write(self.using, [self.completion(status=status, body=body)])

    def completion(self, *, status: int, body: Any) -> RowWrite:
        """:meth:`complete` as a row the effect writes in its own statement
        (``shop.rowwrites``); it raises IdempotencyConflict there if the key was taken over."""
        connection = connections[self.using]
        if not connection.in_atomic_block:
            raise RuntimeError("complete() belongs inside the transaction of the effect")

        def written(values: list[Any]) -> None:
            if not values:
                raise IdempotencyConflict("This Idempotency-Key was taken over by a later request.")
            self.finished = True

        sql, params = update_sql(
            connection,
            IdempotencyRecord,
            {
                "status": IdempotencyRecord.Status.COMPLETED,
                "response_status": status,
                "response_body": body,
                "completed_at": timezone.now(),
            },
            {"id": self.record_id, "owner_token": self.token,
             "status": IdempotencyRecord.Status.IN_FLIGHT},
        )  # fmt: skip
        return RowWrite(sql, params, done=written)

    def remember(self, *, status: int, body: Any) -> None:
        """Store the response to replay in a transaction of its own: for a refusal (out of
        stock), or for an effect that spans several databases and had its resource attached
        (:meth:`attach`) inside its own first transaction."""
        with transaction.atomic(using=self.using):
            self._mine().update(
                status=IdempotencyRecord.Status.COMPLETED,
                response_status=status,
                response_body=body,
                completed_at=timezone.now(),
            )
        self.finished = True

    def release(self) -> bool:
        """Let the key go, only while this claim still owns it. A request that had no effect
        forgets it. One that already created its resource (:meth:`attach`) must not: the key
        is left for the client's retry to take over at once and resume that resource
        (:meth:`resume_or_start`) instead of being refused by it or creating another."""
        self.finished = True
        if self.resource_id:
            return bool(self._mine().update(locked_until=timezone.now()))
        return bool(self._mine().delete()[0])


def validate_key(raw: str | None) -> str:
    if raw is None or raw == "":
        raise IdempotencyKeyRequired()
    if len(raw) > 255 or not all(" " <= ch <= "~" for ch in raw):
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable ASCII characters.",
            extra={"fields": {HEADER: ["1-255 printable ASCII characters."]}},
        )
    return raw


def form_key(raw: str | None) -> str:
    """The idempotency key a rendered storefront form carries (a double click acts once), or a
    fresh random one when it is missing or not what validate_key accepts: a form field is the
    client's text, and a NUL or a 10,000-character key must not reach the records table."""
    try:
        return validate_key((raw or "")[:200])
    except ShopError:
        return uuid.uuid4().hex


def request_fingerprint(*, method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method.upper()} {path}\n{canonical}".encode()).hexdigest()


def idempotency_begin(
    *, using: str, user_id: int, key: str, fingerprint: str
) -> IdempotencyClaim | Replay:
    """Claim ``key`` for ``user_id``, or learn that its response can be replayed.

    Raises IdempotencyMismatch (422) or IdempotencyConflict (409 with Retry-After).
    """
    ttl = timedelta(seconds=settings.IDEMPOTENCY_LOCK_TTL)
    for _ in range(3):  # the record may vanish (released) between our insert and our read
        now = timezone.now()
        token = secrets.token_hex(16)
        # One INSERT is a transaction of its own: outside a caller's transaction it runs in
        # autocommit (no BEGIN/COMMIT round trips); inside one it cannot fail it (a key
        # already there is simply not inserted).
        connection = connections[using]
        record = IdempotencyRecord(
            user_id=user_id,
            key=key,
            fingerprint=fingerprint,
            owner_token=token,
            locked_until=now + ttl,
            created_at=now,
        )
        sql, params = insert_sql(connection, [record])
        [inserted_ids] = rows_write(
            using, [RowWrite(f"{sql} ON CONFLICT (user_id, key) DO NOTHING", params, "id")]
        )
        if inserted_ids:
            return IdempotencyClaim(using, user_id, inserted_ids[0], token)
        record = IdempotencyRecord.objects.using(using).filter(user_id=user_id, key=key).first()
        if record is None:
            continue
        if record.fingerprint != fingerprint:
            raise IdempotencyMismatch()
        if record.status == IdempotencyRecord.Status.COMPLETED:
            return Replay(record.response_status, record.response_body)
        if record.locked_until > now:
            wait = math.ceil((record.locked_until - now).total_seconds())
            raise IdempotencyConflict(retry_after=max(1, min(wait, 5)))
        # The owner's lock ran out (it died or stalled): take the key over.
        taken = (
            IdempotencyRecord.objects.using(using)
            .filter(
                id=record.id,
                owner_token=record.owner_token,
                status=IdempotencyRecord.Status.IN_FLIGHT,
            )
            .update(owner_token=token, locked_until=now + ttl)
        )
        if taken:
            return IdempotencyClaim(using, user_id, record.id, token, record.resource_id)
    raise IdempotencyConflict(retry_after=1)


def _stored_refusal(exc: ShopError) -> bool:
    """Refusals worth replaying: decided by the shop, not a malformed request or an outage."""
    return 400 <= exc.http_status < 500 and exc.code != "validation_error"


@contextlib.contextmanager
def idempotency_claimed(
    *, using: str, user_id: int, key: str, fingerprint: str, remember_refusals: bool = True
) -> Iterator[IdempotencyClaim | Replay]:
    """The key's claim on ``using`` (or its Replay), settled however the block ends: a domain
    refusal raised inside is remembered for replay (when ``remember_refusals``); anything else
    releases the key so the client may retry; a block that returns without completing the
    claim releases it too (and logs: that is a bug)."""
    outcome = idempotency_begin(using=using, user_id=user_id, key=key, fingerprint=fingerprint)
    if isinstance(outcome, Replay):
        yield outcome
        return
    claim = outcome
    try:
        yield claim
    except ShopError as exc:
        if remember_refusals and _stored_refusal(exc) and not isinstance(exc, IdempotencyConflict):
            _quietly(claim.remember, status=exc.http_status, body=exc.as_dict())
        else:
            _quietly(claim.release)
        raise
    except BaseException:
        _quietly(claim.release)
        raise
    if not claim.finished:
        logger.error("idempotent request finished without completing its key; releasing it")
        _quietly(claim.release)


@contextlib.contextmanager
def idempotent_request(
    request: Request, *, using: str, user_id: int
) -> Iterator[IdempotencyClaim | Replay]:
    """Wrap one API write: yields a claim (do the work, complete it inside the effect's
    transaction) or a Replay (return ``replay.response()``). A domain refusal raised inside is
    remembered for replay; anything else releases the key so the client may retry."""
    key = validate_key(request.headers.get(HEADER))
    fingerprint = request_fingerprint(method=request.method, path=request.path, body=request.data)
    with idempotency_claimed(
        using=using, user_id=user_id, key=key, fingerprint=fingerprint
    ) as outcome:
        yield outcome


def _quietly(action: Any, **kwargs: Any) -> None:
    # The shard may be the thing that failed; the record then expires and is taken over.
    try:
        action(**kwargs)
    except DatabaseError as exc:
        logger.warning("could not settle an idempotency key: %s", exc)


def idempotency_cleanup() -> int:
    """Delete records older than IDEMPOTENCY_RECORD_TTL on every shard."""
    cutoff = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_RECORD_TTL)
    return sum(
        shards_each(
            "idempotency_cleanup",
            lambda alias: (
                IdempotencyRecord.objects.using(alias).filter(created_at__lt=cutoff).delete()[0]
            ),
        ).values()
    )
