from typing import Any

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Platform"

    def ready(self) -> None:
        from celery.signals import task_postrun, task_prerun, worker_process_shutdown

        from shop import alerts, metrics  # noqa: F401 - alerts connects its receivers on import

        # Task metrics in whichever process runs the task (a Celery worker, or the web process
        # in the eager embedded profile).
        def started(task_id: str = "", **_: Any) -> None:
            metrics.task_started(task_id)

        def finished(task_id: str = "", task: Any = None, state: str = "", **_: Any) -> None:
            outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state, "failure")
            metrics.task_finished(getattr(task, "name", "?"), task_id, outcome)

        def process_exit(pid: int | None = None, **_: Any) -> None:
            import os

            metrics.mark_process_dead(pid or os.getpid())

        # A worker keeps its database connections between tasks (CELERY_DB_REUSE_MAX); around
        # each task they are tidied as Django tidies them around a request: closed if broken,
        # left in a transaction or older than DB_CONN_MAX_AGE. Not for an eager task, which runs
        # inside the caller's request or transaction.
        def connections_tidy(task: Any = None, **_: Any) -> None:
            if not getattr(getattr(task, "request", None), "is_eager", False):
                from django.db import close_old_connections

                close_old_connections()

        task_prerun.connect(connections_tidy, weak=False, dispatch_uid="shop-db-task-prerun")
        task_postrun.connect(connections_tidy, weak=False, dispatch_uid="shop-db-task-postrun")
        task_prerun.connect(started, weak=False, dispatch_uid="shop-metrics-task-prerun")
        task_postrun.connect(finished, weak=False, dispatch_uid="shop-metrics-task-postrun")
        worker_process_shutdown.connect(
            process_exit, weak=False, dispatch_uid="shop-metrics-process-exit"
        )
