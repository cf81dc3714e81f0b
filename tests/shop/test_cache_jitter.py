"""TTL jitter: keys written together expire spread over [0.9 T, 1.1 T]."""

from __future__ import annotations

import statistics
import time

import pytest

from shop.cache import cache_fetch, versioned_key
from tests.shop.cache_helpers import remaining_ttl

TTL = 1000
KEYS = 500


@pytest.mark.django_db
def test_expiries_of_many_keys_spread_across_ten_percent_either_side():
    # Given many keys filled one after another with the same nominal TTL
    started = time.monotonic()
    for i in range(KEYS):
        cache_fetch(f"jitter:{i}", lambda i=i: {"n": i}, ttl=TTL, groups=(f"jitter:{i}",))

    # When we read the TTL the cache really gave each of them
    ttls = [remaining_ttl(versioned_key(f"jitter:{i}", (f"jitter:{i}",))) for i in range(KEYS)]
    # (time spent filling and reading, which a loaded machine stretches, has run off them)
    spent = time.monotonic() - started

    # Then every expiry lies in [0.9 T, 1.1 T] and they are spread across it, not clustered
    assert min(ttls) >= 0.9 * TTL - spent - 1
    assert max(ttls) <= 1.1 * TTL + 1
    assert min(ttls) < 0.93 * TTL
    assert max(ttls) > 1.07 * TTL
    assert statistics.pstdev(ttls) > 0.04 * TTL  # uniform on ±10 % has σ ≈ 0.058 T
    assert len({round(t) for t in ttls}) > 100


@pytest.mark.django_db
def test_not_found_is_cached_with_the_short_miss_ttl(settings):
    settings.CACHE_MISS_TTL = 60
    cache_fetch("jitter:missing", lambda: None, ttl=TTL, groups=("jitter:missing",))
    ttl = remaining_ttl(versioned_key("jitter:missing", ("jitter:missing",)))
    assert 0.9 * 60 - 2 <= ttl <= 1.1 * 60 + 1
