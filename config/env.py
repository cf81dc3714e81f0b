"""Environment handling: the one place configuration is read from the process environment.

Pure functions only (no Django imports), so settings modules and tests can use them freely.
"""

from __future__ import annotations

from collections.abc import Sequence

import environ

env = environ.Env()

ORDER_SHARD_ALIAS_PREFIX = "orders_"


class ShardMapError(ValueError):
    """The logical→physical order shard map is inconsistent."""


def shard_aliases(count: int) -> list[str]:
    return [f"{ORDER_SHARD_ALIAS_PREFIX}{i}" for i in range(count)]


def default_shard_map(logical_count: int, aliases: Sequence[str]) -> dict[int, str]:
    """Contiguous ranges: logical shard ``l`` lives on ``aliases[l * N // L]``.

    Ranges (not modulo) so that adding a physical shard later moves whole ranges, which is a
    data copy plus a map change. Once data exists, pin the map with ORDER_SHARD_MAP.
    """
    if not aliases:
        raise ShardMapError("at least one order shard alias is required")
    if logical_count < len(aliases):
        raise ShardMapError(
            f"{logical_count} logical shards cannot cover {len(aliases)} physical shards"
        )
    n = len(aliases)
    return {logical: aliases[logical * n // logical_count] for logical in range(logical_count)}


def parse_shard_map(spec: str, logical_count: int, aliases: Sequence[str]) -> dict[int, str]:
    """Parse ``"0-31=orders_0,32-63=orders_1"`` into ``{logical: alias}``.

    Every logical shard must be placed exactly once, on a configured alias.
    """
    mapping: dict[int, str] = {}
    for raw_part in spec.split(","):
        part = raw_part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ShardMapError(f"ORDER_SHARD_MAP entry {part!r} is not RANGE=ALIAS")
        range_text, alias = (s.strip() for s in part.split("=", 1))
        if alias not in aliases:
            raise ShardMapError(f"ORDER_SHARD_MAP names {alias!r}, which is not in {list(aliases)}")
        try:
            if "-" in range_text:
                low_text, high_text = range_text.split("-", 1)
                low, high = int(low_text), int(high_text)
            else:
                low = high = int(range_text)
        except ValueError as exc:
            raise ShardMapError(f"ORDER_SHARD_MAP range {range_text!r} is not a number") from exc
        if not 0 <= low <= high < logical_count:
            raise ShardMapError(
                f"ORDER_SHARD_MAP range {range_text!r} is outside 0-{logical_count - 1}"
            )
        for logical in range(low, high + 1):
            if logical in mapping:
                raise ShardMapError(f"logical shard {logical} is mapped twice in ORDER_SHARD_MAP")
            mapping[logical] = alias
    missing = [logical for logical in range(logical_count) if logical not in mapping]
    if missing:
        raise ShardMapError(f"ORDER_SHARD_MAP leaves logical shards unmapped: {missing[:10]}")
    return mapping
