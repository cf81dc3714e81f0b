"""Several row writes sent as one statement: the hot path's transactions in one round trip.

A checkout writes an order, its lines and event, an outbox message and its idempotency key's
stored response, all in one transaction on the buyer's shard. Through the ORM that is five
statements, each built by Django's SQL compiler; here each write is a plain ``INSERT`` or
``UPDATE`` (a :class:`RowWrite`), and on PostgreSQL they travel together as data-modifying CTEs
of one statement. Elsewhere (the embedded SQLite profile) they run one after the other.

Each write says what it returns per row (``returning``, one expression) and what to do with the
values (``done``): a write that must touch a row (a conditional ``UPDATE``) raises there, inside
the caller's transaction, which then rolls every write back.

The writes of one call must not depend on each other's effects: on PostgreSQL they all see the
database as it was before the statement (an ``UPDATE`` does not find a row a sibling
``INSERT`` adds; ``tests/shop/test_rowwrites.py``). Foreign keys between rows of one call are
fine: PostgreSQL checks them at the end of the statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.db.models import Model, QuerySet
from django.utils import timezone


@dataclass
class RowWrite:
    """One ``INSERT`` or ``UPDATE`` (without ``RETURNING``), its parameters, the expression it
    returns per row written, and ``done(values)`` called with those values once it ran."""

    sql: str
    params: Sequence[Any]
    returning: str = "1"
    done: Callable[[list[Any]], None] | None = None


def rows_write(using: str, writes: Sequence[RowWrite]) -> list[list[Any]]:
    """Run ``writes`` on ``using`` (inside the caller's transaction when it has one), in order;
    then call each one's ``done``. Returns each write's values."""
    if not writes:
        return []
    connection = connections[using]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and len(writes) > 1:
            ctes = ", ".join(
                f"w{n} AS ({write.sql} RETURNING {write.returning} AS r)"
                for n, write in enumerate(writes)
            )
            values = ", ".join(
                f"(SELECT array_agg(r) FROM w{n})"  # noqa: S608  # nosec B608 - no input
                for n in range(len(writes))
            )
            cursor.execute(
                f"WITH {ctes} SELECT {values}",  # nosec B608 - SQL from the writers
                [param for write in writes for param in write.params],
            )
            found = [list(column or ()) for column in cursor.fetchone()]
        else:
            found = []
            for write in writes:
                cursor.execute(f"{write.sql} RETURNING {write.returning}", write.params)
                found.append([row[0] for row in cursor.fetchall()])
    for write, values in zip(writes, found, strict=True):
        if write.done is not None:
            write.done(values)
    return found


def insert_sql(connection: Any, objs: Sequence[Model]) -> tuple[str, list[Any]]:
    """``INSERT INTO <table> (<every concrete column but an auto id>) VALUES …`` for ``objs``
    (one model), values prepared the way ``save()`` prepares them. An ``auto_now`` or
    ``auto_now_add`` field left empty gets the current time (one ``now`` for the lot), set on
    the instance too; one the caller set is kept (a reply built from it says what is stored)."""
    meta = objs[0]._meta
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field]
    stamped = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    if stamped:
        now = timezone.now()
        for obj in objs:
            for f in stamped:
                if getattr(obj, f.attname) is None:
                    setattr(obj, f.attname, now)
    quote = connection.ops.quote_name
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [
        f.get_db_prep_save(getattr(obj, f.attname), connection) for obj in objs for f in fields
    ]
    # Identifiers come from the model's own metadata, every value is a parameter.
    table, columns = quote(meta.db_table), ", ".join(quote(f.column) for f in fields)
    values = ", ".join([row] * len(objs))
    return f"INSERT INTO {table} ({columns}) VALUES {values}", params  # noqa: S608  # nosec B608


def inserted(*objs: Model, using: str) -> None:
    """Mark instances written by a RowWrite as saved on ``using`` (as ``save()`` would)."""
    for obj in objs:
        obj._state.adding = False
        obj._state.db = using


def update_sql(
    connection: Any, model: type[Model], values: dict[str, Any], where: dict[str, Any]
) -> tuple[str, list[Any]]:
    """``UPDATE <table> SET <field> = … WHERE <field> = … AND …`` for ``model``'s fields by
    name, values prepared the way ``save()`` and ``filter()`` prepare them."""
    meta, quote = model._meta, connection.ops.quote_name
    params: list[Any] = []

    def terms(pairs: dict[str, Any]) -> list[str]:
        found = []
        for name, value in pairs.items():
            field = meta.get_field(name)
            found.append(f"{quote(field.column)} = %s")
            params.append(field.get_db_prep_save(value, connection))
        return found

    assignments, conditions = ", ".join(terms(values)), " AND ".join(terms(where))
    # Identifiers come from the model's own metadata, every value is a parameter.
    return f"UPDATE {quote(meta.db_table)} SET {assignments} WHERE {conditions}", params  # noqa: S608  # nosec B608


def known(queryset: QuerySet, rows: list[Any]) -> QuerySet:
    """``queryset`` with its rows already known (rows just written, or none for a new
    object's relations): iterating it runs no query. Stored the way ``prefetch_related``
    stores a prefetch, e.g. in ``instance._prefetched_objects_cache``."""
    queryset._result_cache = rows
    queryset._prefetch_done = True
    return queryset
