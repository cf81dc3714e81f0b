from typing import Any

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    verbose_name = "Platform"

    def ready(self) -> None:
        from celery.signals import task_postrun, task_prerun, worker_process_shutdown

        from shop import metrics

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

        task_prerun.connect(started, weak=False, dispatch_uid="shop-metrics-task-prerun")
        task_postrun.connect(finished, weak=False, dispatch_uid="shop-metrics-task-postrun")
        worker_process_shutdown.connect(
            process_exit, weak=False, dispatch_uid="shop-metrics-process-exit"
        )
