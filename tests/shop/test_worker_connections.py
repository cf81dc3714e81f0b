"""A Celery worker keeps its database connections between tasks, and drops a broken one."""

from __future__ import annotations

import uuid

import pytest
from celery import current_app
from django.conf import settings
from django.db import connection

from tests.orders.conftest import assert_invariants_hold
from tests.workers import Worker, purge_queues, wait_for

TASK = "shop.tasks.idempotency_cleanup"  # a small task that queries every order shard


def _worker_backends(app_name: str) -> list[int]:
    """Backend pids of the connections the worker opened (to any database)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s ORDER BY pid",
            [app_name],
        )
        return [row[0] for row in cursor.fetchall()]


def _succeeded(worker: Worker) -> int:
    return sum(f"{TASK}[" in line and " succeeded " in line for line in worker.output)


def _run_task(worker: Worker) -> None:
    """Send TASK and wait until the worker logs it as succeeded."""
    done = _succeeded(worker)
    current_app.send_task(TASK)
    try:
        wait_for(lambda: _succeeded(worker) > done)
    except AssertionError as exc:  # show what the worker said instead
        raise AssertionError("".join(worker.output[-30:])) from exc


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_worker_reuses_its_connection_across_tasks_and_reconnects_after_it_breaks():
    purge_queues()
    app_name = f"worker-reuse-{uuid.uuid4().hex[:8]}"  # libpq names the worker's connections
    worker = Worker(DB_CONN_MAX_AGE="60", PGAPPNAME=app_name).start()
    try:
        # When the worker runs three tasks in a row
        seen = []
        for _ in range(3):
            _run_task(worker)
            seen.append(_worker_backends(app_name))
        # Then the same connections (one per shard) served them all and stay open between tasks
        assert len(seen[0]) == len(settings.ORDER_SHARD_ALIASES), seen
        assert seen[0] == seen[1] == seen[2]

        # When those connections are killed between tasks (a database restart, a failover)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", [seen[0]])
        wait_for(lambda: not _worker_backends(app_name), timeout=10)

        # Then the next task still succeeds, on new connections
        _run_task(worker)
        after = _worker_backends(app_name)
        assert len(after) == len(seen[0]) and not set(after) & set(seen[0])
        failures = [line for line in worker.output if f"{TASK}[" in line and " raised " in line]
        assert not failures, failures
    finally:
        worker.stop()
    assert_invariants_hold()


@pytest.mark.needs_broker
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases="__all__", transaction=True)
def test_worker_closes_connections_after_each_task_when_conn_max_age_is_zero():
    purge_queues()
    app_name = f"worker-noreuse-{uuid.uuid4().hex[:8]}"
    worker = Worker(DB_CONN_MAX_AGE="0", PGAPPNAME=app_name).start()
    try:
        _run_task(worker)
        # With DB_CONN_MAX_AGE=0 the connection is closed once the task is done
        wait_for(lambda: not _worker_backends(app_name), timeout=10)
        assert _worker_backends(app_name) == []
    finally:
        worker.stop()
    assert_invariants_hold()
