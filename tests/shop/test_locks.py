from __future__ import annotations

import time

import pytest

from shop.locks import OwnedLock


def test_only_one_holder_at_a_time_and_only_the_owner_releases():
    first, second = OwnedLock("job", ttl=5), OwnedLock("job", ttl=5)
    assert first.acquire()
    assert not second.acquire()
    assert not second.release()  # not the owner: the lock stays
    assert first.owner_token() == first.token
    assert first.release()
    assert second.acquire()
    assert second.release()


def test_an_expired_lock_cannot_be_released_by_its_former_holder():
    former = OwnedLock("job", ttl=0.2)
    assert former.acquire()
    time.sleep(0.35)
    current = OwnedLock("job", ttl=5)
    assert current.acquire()

    assert former.release() is False
    assert current.owner_token() == current.token  # still held by the new owner
    assert current.release()


def test_a_lock_needs_a_positive_ttl():
    with pytest.raises(ValueError):
        OwnedLock("job", ttl=0)
