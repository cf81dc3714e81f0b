"""Run the periodic tasks of CELERY_BEAT_SCHEDULE in this process, in a loop.

For the embedded profile (`make run`), which has no broker and so no beat or worker: the
expiry sweep, the payment recovery and the other housekeeping still happen. With a broker,
run `celery beat` and a worker instead (Procfile).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from celery.schedules import maybe_schedule
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run CELERY_BEAT_SCHEDULE's tasks in-process, each at its interval (embedded profile)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="run every task once and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs = {
            name: (entry["task"], maybe_schedule(entry["schedule"]))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        }
        # Interval jobs run at start; calendar jobs (crontab) wait for their time.
        last_run = {
            name: timezone.now() if hasattr(when, "hour") else timezone.now() - timedelta(days=1)
            for name, (_, when) in jobs.items()
        }
        self.stdout.write(f"running {len(jobs)} periodic tasks in-process")
        while True:
            for name, (task_path, when) in jobs.items():
                if not options["once"] and not when.is_due(last_run[name]).is_due:
                    continue
                last_run[name] = timezone.now()
                try:
                    result = import_string(task_path)()
                except Exception:  # one failing job must not stop the others
                    logger.exception("periodic task %s failed", name)
                else:
                    if result:
                        self.stdout.write(f"{name}: {result}")
            if options["once"]:
                return
            time.sleep(1)
