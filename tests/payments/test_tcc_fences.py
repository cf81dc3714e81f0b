"""TCC disorder on real PostgreSQL: empty rollbacks, refused late tries, idempotent
confirm/cancel, and no fence without its effect."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from apps.payments.models import Account, Transfer
from apps.payments.services import ledger
from shop.models import TccFence, TccShardFence
from shop.sharding import order_shard_aliases
from shop.tcc import FenceRefused, fence_cancel, fence_confirm, fence_try, fences_cleanup
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"
pytestmark = [pytest.mark.needs_postgres, pytest.mark.django_db(databases=ALL, transaction=True)]


@pytest.fixture
def wallet_user():
    user = UserFactory(username="fenced")
    ledger.wallet_topup(user_id=user.id, amount=1000, currency="EUR", reference="t", actor="t")
    return user


def _freeze(user, xid):
    return lambda: ledger.wallet_freeze(user_id=user.id, amount=300, currency="EUR", reference=xid)


def _wallet(user):
    return Account.objects.get(key=f"wallet:{user.id}:EUR")


@pytest.mark.parametrize("using", ["default", "shard"])
def test_two_concurrent_cancels_with_no_try_both_succeed_with_one_fence_row(using):
    alias = order_shard_aliases()[0] if using == "shard" else "default"
    effects = []
    results, errors = [], []
    barrier = threading.Barrier(2)

    def cancel():
        try:
            barrier.wait()
            results.append(
                fence_cancel(
                    using=alias,
                    xid="x1",
                    branch="b",
                    user_id=1,
                    effect=lambda: effects.append("undo"),
                )
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=cancel) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert results == [False, False]  # empty rollbacks: nothing to undo
    assert effects == []
    model = TccShardFence if using == "shard" else TccFence
    assert list(model.objects.using(alias).values_list("status", flat=True)) == ["suspended"]


def test_a_late_try_after_its_cancel_reserves_nothing(wallet_user):
    assert fence_cancel(using="default", xid="x2", branch="wallet", effect=lambda: None) is False
    with pytest.raises(FenceRefused):
        fence_try(using="default", xid="x2", branch="wallet", effect=_freeze(wallet_user, "x2"))
    wallet = _wallet(wallet_user)
    assert (wallet.available, wallet.frozen) == (1000, 0)
    assert not Transfer.objects.filter(kind="wallet_freeze").exists()


def test_confirm_and_cancel_replayed_ten_times_have_one_effect(wallet_user):
    fence_try(using="default", xid="x3", branch="wallet", effect=_freeze(wallet_user, "x3"))
    assert (
        fence_try(using="default", xid="x3", branch="wallet", effect=_freeze(wallet_user, "x3"))
        is None
    )

    def capture():
        ledger.wallet_capture(user_id=wallet_user.id, amount=300, currency="EUR", reference="x3")

    outcomes = [
        fence_confirm(using="default", xid="x3", branch="wallet", effect=capture) for _ in range(10)
    ]
    assert outcomes == [True] + [False] * 9
    assert Transfer.objects.filter(kind="wallet_capture").count() == 1
    assert (_wallet(wallet_user).available, _wallet(wallet_user).frozen) == (700, 0)

    fence_try(using="default", xid="x4", branch="wallet", effect=_freeze(wallet_user, "x4"))

    def unfreeze():
        ledger.wallet_unfreeze(user_id=wallet_user.id, amount=300, currency="EUR", reference="x4")

    outcomes = [
        fence_cancel(using="default", xid="x4", branch="wallet", effect=unfreeze) for _ in range(10)
    ]
    assert outcomes == [True] + [False] * 9
    assert Transfer.objects.filter(kind="wallet_unfreeze").count() == 1
    assert (_wallet(wallet_user).available, _wallet(wallet_user).frozen) == (700, 0)
    with pytest.raises(FenceRefused):  # a cancelled branch is never confirmed
        fence_confirm(using="default", xid="x4", branch="wallet", effect=capture)
    assert_invariants_hold()


def test_concurrent_confirms_apply_once(wallet_user):
    fence_try(using="default", xid="x5", branch="wallet", effect=_freeze(wallet_user, "x5"))
    outcomes, barrier = [], threading.Barrier(5)

    def confirm():
        try:
            barrier.wait()
            outcomes.append(
                fence_confirm(
                    using="default",
                    xid="x5",
                    branch="wallet",
                    effect=lambda: ledger.wallet_capture(
                        user_id=wallet_user.id, amount=300, currency="EUR", reference="x5"
                    ),
                )
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=confirm) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, False, False, False, True]
    assert (_wallet(wallet_user).available, _wallet(wallet_user).frozen) == (700, 0)


@pytest.mark.parametrize("using", ["default", "shard"])
def test_an_exception_after_the_business_write_leaves_no_fence_row(wallet_user, using):
    alias = order_shard_aliases()[1] if using == "shard" else "default"

    def freeze_then_fail():
        ledger.wallet_freeze(user_id=wallet_user.id, amount=300, currency="EUR", reference="x6")
        raise RuntimeError("crash after the business write")

    with pytest.raises(RuntimeError):
        fence_try(
            using=alias, xid="x6", branch="b", user_id=wallet_user.id, effect=freeze_then_fail
        )

    model = TccShardFence if using == "shard" else TccFence
    assert not model.objects.using(alias).exists()
    if using == "default":  # same database: the freeze rolled back with its fence
        assert (_wallet(wallet_user).available, _wallet(wallet_user).frozen) == (1000, 0)
        assert not Transfer.objects.filter(kind="wallet_freeze").exists()


def test_cleanup_keeps_the_fences_of_undecided_branches(wallet_user, settings):
    # Given old fences: a tried branch still waiting for its decision (default and a shard),
    # and a branch long confirmed
    fence_try(using="default", xid="x7", branch="wallet", effect=_freeze(wallet_user, "x7"))
    shard = order_shard_aliases()[0]
    fence_try(using=shard, xid="x7", branch="order", user_id=wallet_user.id, effect=lambda: None)
    fence_try(using="default", xid="x8", branch="wallet", effect=_freeze(wallet_user, "x8"))
    fence_confirm(
        using="default",
        xid="x8",
        branch="wallet",
        effect=lambda: ledger.wallet_capture(
            user_id=wallet_user.id, amount=300, currency="EUR", reference="x8"
        ),
    )
    old = timezone.now() - timedelta(days=settings.TCC_FENCE_RETENTION_DAYS + 1)
    TccFence.objects.update(created_at=old, updated_at=old)
    TccShardFence.objects.using(shard).update(created_at=old, updated_at=old)

    # When the cleanup runs, only the decided branch's fence goes
    assert fences_cleanup() == 1
    assert set(TccFence.objects.values_list("xid", "status")) == {("x7", "tried")}
    assert TccShardFence.objects.using(shard).filter(xid="x7", status="tried").exists()

    # Then a late cancel still unfreezes the money, and a late confirm would still be accepted
    def unfreeze():
        ledger.wallet_unfreeze(user_id=wallet_user.id, amount=300, currency="EUR", reference="x7")

    assert fence_cancel(using="default", xid="x7", branch="wallet", effect=unfreeze) is True
    assert (_wallet(wallet_user).available, _wallet(wallet_user).frozen) == (700, 0)
    assert fence_confirm(
        using=shard, xid="x7", branch="order", user_id=wallet_user.id, effect=lambda: None
    )
    assert fences_cleanup() == 0  # decided just now: kept for the full retention from here
    assert_invariants_hold()
