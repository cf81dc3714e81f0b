"""Run the periodic tasks of CELERY_BEAT_SCHEDULE in this process, in a loop.

For the embedded profile (`make run`), which has no broker and so no beat or worker: the
expiry sweep, the payment recovery and the other housekeeping still happen. With a broker,
run `celery beat` and a worker instead (Procfile).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run CELERY_BEAT_SCHEDULE's tasks in-process, each at its interval (embedded profile)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="run every task once and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        schedule = {
            name: (entry["task"], float(entry["schedule"]))
            for name, entry in settings.CELERY_BEAT_SCHEDULE.items()
        }
        due = dict.fromkeys(schedule, 0.0)
        self.stdout.write(f"running {len(schedule)} periodic tasks in-process")
        while True:
            now = time.monotonic()
            for name, (task_path, every) in schedule.items():
                if now < due[name]:
                    continue
                due[name] = now + every
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
