"""TCC fences: the participant side of try / confirm / cancel.

Each branch keeps a fence row in its own database, written in the same local transaction as
its business effect, which makes a participant safe against every disorder a coordinator and
a network can produce:

* **try** inserts the fence (`tried`) and applies the effect together; a try whose branch was
  already cancelled finds the fence (`suspended`) and is refused — no hanging reservation;
  a repeated try does nothing.
* **confirm** applies its effect and marks the fence `confirmed` together; repeated, it does
  nothing; it refuses a branch that was never tried or was cancelled.
* **cancel** of a tried branch undoes the effect and marks `cancelled` together; a cancel
  that arrives before any try only records `suspended` (the empty rollback); repeated, it does
  nothing. Two concurrent cancels with no try leave one fence row.
* an exception inside the effect rolls the fence back with it.

Fences are kept TCC_FENCE_RETENTION_DAYS (longer than any retry window), then deleted —
except a `tried` one, kept until its branch is confirmed or cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import IntegrityError, connections, models, transaction
from django.utils import timezone

from shop.models import FenceStatus, TccFence, TccShardFence
from shop.rowwrites import RowWrite, rows_write, update_sql
from shop.sharding.loops import shards_each

T = TypeVar("T")


class FenceRefused(Exception):
    """The branch cannot do that: tried after its cancel, confirm without try, and so on."""


def _model(using: str) -> type[models.Model]:
    return TccFence if using == "default" else TccShardFence


def _fields(using: str, xid: str, branch: str, user_id: int | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"xid": xid, "branch": branch}
    if using != "default":
        fields["user_id"] = user_id
    return fields


def fence_try(
    *, using: str, xid: str, branch: str, effect: Callable[[], T], user_id: int | None = None
) -> T | None:
    """Run ``effect`` as the branch's try, once. Returns its result, or None if the branch
    had already been tried. Raises FenceRefused if it was cancelled first."""
    model = _model(using)
    fields = _fields(using, xid, branch, user_id)
    with transaction.atomic(using=using):
        try:
            with transaction.atomic(using=using):
                model.objects.using(using).create(status=FenceStatus.TRIED, **fields)
        except IntegrityError:
            existing = model.objects.using(using).get(**fields)
            if existing.status == FenceStatus.TRIED or existing.status == FenceStatus.CONFIRMED:
                return None
            raise FenceRefused(f"{xid}/{branch} was cancelled before its try") from None
        return effect()


def fence_confirm(
    *,
    using: str,
    xid: str,
    branch: str,
    effect: Callable[[], Any] | None = None,
    user_id: int | None = None,
    writes: Callable[[], Sequence[RowWrite]] | None = None,
) -> bool:
    """Run the branch's confirm once: ``effect()``, or the rows ``writes()`` gives, written
    as one statement (``shop.rowwrites``: the hot path). False if it was already confirmed;
    FenceRefused if it was never tried or was cancelled. Neither runs in those cases."""
    model = _model(using)
    fields = _fields(using, xid, branch, user_id)
    try:
        with transaction.atomic(using=using):
            # One conditional UPDATE marks and locks a tried fence; a concurrent confirm waits
            # on the row lock, then finds it no longer `tried`.
            sql, params = update_sql(
                connections[using], model,
                {"status": FenceStatus.CONFIRMED, "updated_at": timezone.now()},
                {**fields, "status": FenceStatus.TRIED},
            )  # fmt: skip
            rows_write(using, [RowWrite(sql, params, done=_tried)])
            if writes is not None:
                rows_write(using, writes())
            if effect is not None:
                effect()
            return True
    except _NotTried:
        fence = model.objects.using(using).filter(**fields).first()
        if fence is None:
            raise FenceRefused(f"{xid}/{branch}: confirm without a try") from None
        if fence.status == FenceStatus.CONFIRMED:
            return False
        raise FenceRefused(f"{xid}/{branch}: cannot confirm a {fence.status} branch") from None


class _NotTried(Exception):
    """The fence was not `tried` when its confirm came: the confirm's writes roll back."""


def _tried(values: list[Any]) -> None:
    if not values:
        raise _NotTried()


def fence_cancel(
    *, using: str, xid: str, branch: str, effect: Callable[[], Any], user_id: int | None = None
) -> bool:
    """Undo the branch's try with ``effect``, once. Before any try it only records the cancel
    (empty rollback, so a late try is refused). False when there was nothing to undo."""
    model = _model(using)
    fields = _fields(using, xid, branch, user_id)
    with transaction.atomic(using=using):
        fence = model.objects.using(using).select_for_update().filter(**fields).first()
        if fence is None:
            try:
                with transaction.atomic(using=using):
                    model.objects.using(using).create(status=FenceStatus.SUSPENDED, **fields)
                return False
            except IntegrityError:
                # A concurrent try or cancel inserted it first: act on what it wrote.
                fence = model.objects.using(using).select_for_update().get(**fields)
        if fence.status in (FenceStatus.CANCELLED, FenceStatus.SUSPENDED):
            return False
        if fence.status == FenceStatus.CONFIRMED:
            raise FenceRefused(f"{xid}/{branch}: cannot cancel a confirmed branch")
        effect()
        fence.status = FenceStatus.CANCELLED
        fence.save(using=using, update_fields=["status", "updated_at"])
        return True


def fences_cleanup() -> int:
    """Delete fences created and last changed over TCC_FENCE_RETENTION_DAYS ago on every
    database, except those of branches still `tried`: their confirm or cancel has yet to come
    (a recovery backing off, a transaction in manual review), and without the fence a confirm
    would be refused and a cancel would undo nothing (the money would stay frozen). A branch
    decided late keeps its fence for the full retention after its decision."""
    cutoff = timezone.now() - timedelta(days=settings.TCC_FENCE_RETENTION_DAYS)
    deleted = (
        TccFence.objects.filter(created_at__lt=cutoff, updated_at__lt=cutoff)
        .exclude(status=FenceStatus.TRIED)
        .delete()[0]
    )
    deleted += sum(
        shards_each(
            "fences_cleanup",
            lambda alias: (
                TccShardFence.objects.using(alias)
                .filter(created_at__lt=cutoff, updated_at__lt=cutoff)
                .exclude(status=FenceStatus.TRIED)
                .delete()[0]
            ),
        ).values()
    )
    return deleted
