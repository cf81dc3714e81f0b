"""shop.rowwrites: several INSERT/UPDATEs as one statement (data-modifying CTEs on PostgreSQL,
one after another elsewhere), each write's values handed back in order, and a write that
refuses in its ``done`` rolling the whole statement's rows back with the transaction."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.utils import timezone

from shop.models import IdempotencyRecord
from shop.rowwrites import RowWrite, insert_sql, inserted, rows_write, update_sql
from shop.sharding import order_shard_aliases

ALL = "__all__"


class Refused(Exception):
    pass


def _record(key: str) -> IdempotencyRecord:
    return IdempotencyRecord(
        user_id=7, key=key, fingerprint="f", owner_token="t",
        locked_until=timezone.now() + timedelta(seconds=30),
    )  # fmt: skip


@pytest.mark.django_db(databases=ALL)
def test_the_writes_run_in_order_and_hand_back_their_values():
    alias = order_shard_aliases()[0]
    connection = connections[alias]
    existing, first, second = _record("old"), _record("a"), _record("b")
    [[existing_id]] = rows_write(alias, [RowWrite(*insert_sql(connection, [existing]), "id")])

    # When two INSERTs and an UPDATE of a row that was there before go as one call
    with transaction.atomic(using=alias):
        found = rows_write(alias, [
            RowWrite(*insert_sql(connection, [first]), returning="id"),
            RowWrite(*insert_sql(connection, [second]), returning="key"),
            RowWrite(*update_sql(connection, IdempotencyRecord, {"response_status": 201},
                                 {"id": existing_id}), returning="id"),
        ])  # fmt: skip

    # Then each write's values come back, in the order of the writes
    by_key = dict(IdempotencyRecord.objects.using(alias).values_list("key", "id"))
    assert found == [[by_key["a"]], ["b"], [existing_id]]
    assert IdempotencyRecord.objects.using(alias).get(id=existing_id).response_status == 201


@pytest.mark.django_db(databases=ALL)
def test_a_write_that_refuses_rolls_back_every_row_of_the_statement():
    alias = order_shard_aliases()[0]
    connection = connections[alias]

    def must_touch(values: list) -> None:
        if not values:
            raise Refused()

    # When an INSERT travels with an UPDATE that finds nothing to update and refuses
    with pytest.raises(Refused), transaction.atomic(using=alias):
        rows_write(alias, [
            RowWrite(*insert_sql(connection, [_record("kept?")])),
            RowWrite(*update_sql(connection, IdempotencyRecord, {"response_status": 201},
                                 {"key": "no such key"}), done=must_touch),
        ])  # fmt: skip

    # Then the INSERT rolled back with it
    assert not IdempotencyRecord.objects.using(alias).exists()


@pytest.mark.django_db(databases=ALL)
def test_insert_sql_stamps_empty_timestamps_and_keeps_given_ones():
    alias = order_shard_aliases()[0]
    given = timezone.now() - timedelta(days=1)
    empty, dated = _record("empty"), _record("dated")
    dated.created_at = given

    rows_write(alias, [RowWrite(*insert_sql(connections[alias], [empty, dated]))])
    inserted(empty, dated, using=alias)

    assert empty.created_at is not None and empty.created_at > given
    stored = dict(IdempotencyRecord.objects.using(alias).values_list("key", "created_at"))
    assert stored == {"empty": empty.created_at, "dated": given}
    assert not empty._state.adding and dated._state.db == alias


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL)
def test_on_postgresql_the_writes_of_one_call_do_not_see_each_other():
    """Why the writes of one call must be independent (the module's docstring)."""
    alias = order_shard_aliases()[0]
    connection = connections[alias]

    # When an UPDATE travels with the INSERT of the row it targets
    with transaction.atomic(using=alias):
        found = rows_write(alias, [
            RowWrite(*insert_sql(connection, [_record("new")]), returning="id"),
            RowWrite(*update_sql(connection, IdempotencyRecord, {"response_status": 201},
                                 {"key": "new"}), returning="id"),
        ])  # fmt: skip

    # Then it saw the table as it was before the statement: nothing to update
    assert len(found[0]) == 1 and found[1] == []
    assert IdempotencyRecord.objects.using(alias).get(key="new").response_status is None
