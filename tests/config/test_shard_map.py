from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.env import ShardMapError, default_shard_map, parse_shard_map, shard_aliases


@given(logical=st.integers(1, 256), physical=st.integers(1, 16))
def test_default_map_places_every_logical_shard_in_contiguous_ranges(logical, physical):
    if logical < physical:
        with pytest.raises(ShardMapError):
            default_shard_map(logical, shard_aliases(physical))
        return
    mapping = default_shard_map(logical, shard_aliases(physical))
    assert sorted(mapping) == list(range(logical))
    placed = [mapping[i] for i in range(logical)]
    assert set(placed) == set(shard_aliases(physical))  # every physical shard is used
    assert placed == sorted(placed, key=lambda alias: int(alias.split("_")[1]))  # contiguous


def test_parse_accepts_ranges_and_single_shards():
    mapping = parse_shard_map("0-2=orders_1, 3=orders_0", 4, ["orders_0", "orders_1"])
    assert mapping == {0: "orders_1", 1: "orders_1", 2: "orders_1", 3: "orders_0"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0-3=orders_9", "not in"),
        ("0-1=orders_0", "unmapped"),
        ("0-3=orders_0,2=orders_1", "twice"),
        ("0-4=orders_0", "outside"),
        ("a-b=orders_0", "not a number"),
        ("0-3", "RANGE=ALIAS"),
    ],
)
def test_parse_rejects_inconsistent_maps(spec, message):
    with pytest.raises(ShardMapError, match=message):
        parse_shard_map(spec, 4, ["orders_0", "orders_1"])
