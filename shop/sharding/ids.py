"""64-bit ids that carry their logical shard (Instagram's scheme).

    | 41 bits: ms since ID_EPOCH | 13 bits: logical shard | 10 bits: sequence |

The id is computed by the shard's PostgreSQL in one statement, from its clock and a
sequence, so ids are unique across processes and hosts (up to 1,024 ids per millisecond per
physical shard) and roughly time-ordered. SQLite (the embedded profile, one writer at a time)
keeps the sequence in a table. Decoding needs nothing but the id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import connections, transaction

# 2026-01-01T00:00:00Z: 41 bits of milliseconds last until 2095.
ID_EPOCH_MS = 1_767_225_600_000
TIME_BITS, SHARD_BITS, SEQUENCE_BITS = 41, 13, 10
MAX_LOGICAL_SHARDS = 1 << SHARD_BITS
_SHARD_MASK = MAX_LOGICAL_SHARDS - 1
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
SEQUENCE_NAME = "shop_id_seq"

# Only constants are interpolated; the logical shard is a bound parameter.
_POSTGRES_NEXT_ID = (
    "SELECT ((FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"  # noqa: S608  # nosec B608
    f" - {ID_EPOCH_MS}) << {SHARD_BITS + SEQUENCE_BITS})"
    f" | (%s::bigint << {SEQUENCE_BITS})"
    f" | (nextval('{SEQUENCE_NAME}') %% {1 << SEQUENCE_BITS})"
)


def id_compose(*, ms: int, logical: int, sequence: int) -> int:
    return (
        ((ms - ID_EPOCH_MS) << (SHARD_BITS + SEQUENCE_BITS))
        | ((logical & _SHARD_MASK) << SEQUENCE_BITS)
        | (sequence & _SEQUENCE_MASK)
    )


def id_logical_shard(object_id: int) -> int:
    return (int(object_id) >> SEQUENCE_BITS) & _SHARD_MASK


def id_created_at(object_id: int) -> datetime:
    ms = (int(object_id) >> (SHARD_BITS + SEQUENCE_BITS)) + ID_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def id_is_plausible(object_id: int) -> bool:
    """Positive, 63-bit, and on a logical shard this deployment has."""
    from django.conf import settings

    return 0 < object_id < 2**63 and id_logical_shard(object_id) < settings.LOGICAL_SHARD_COUNT


def id_generate(*, alias: str, logical: int) -> int:
    """A new id on logical shard ``logical``, drawn from the database ``alias``."""
    if not 0 <= logical < MAX_LOGICAL_SHARDS:
        raise ValueError(f"logical shard {logical} does not fit in {SHARD_BITS} bits")
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_POSTGRES_NEXT_ID, [logical])
            return cursor.fetchone()[0]
    return _sqlite_generate(alias, logical)


def _sqlite_generate(alias: str, logical: int) -> int:
    import time

    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(
            "UPDATE shop_idsequence SET value = value + 1 WHERE name = %s RETURNING value",
            [SEQUENCE_NAME],
        )
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                "INSERT INTO shop_idsequence (name, value) VALUES (%s, 1)", [SEQUENCE_NAME]
            )
            row = (1,)
    return id_compose(ms=int(time.time() * 1000), logical=logical, sequence=row[0])


# --- Time from ids (ids are time-ordered: "what happened in the last hour" is an id range) ------

_TIME_SHIFT = SHARD_BITS + SEQUENCE_BITS


def id_floor(moment: datetime) -> int:
    """The smallest id drawn at or after ``moment``."""
    return id_compose(ms=int(moment.timestamp() * 1000), logical=0, sequence=0)


def id_minute() -> Any:
    """A query expression: the minute (since the id epoch) in which the row's id was drawn."""
    from django.db.models import F, Value

    return F("id").bitrightshift(_TIME_SHIFT) / Value(60_000)


def id_minute_start(minute: int) -> datetime:
    return datetime.fromtimestamp((ID_EPOCH_MS + int(minute) * 60_000) / 1000, tz=UTC)
