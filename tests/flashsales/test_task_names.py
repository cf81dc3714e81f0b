"""Task names are persisted (the beat schedule's django_celery_beat rows, queued outbox rows)
and imported by name: every scheduled and routed name must be registered, as its dotted path."""

from django.conf import settings
from django.utils.module_loading import import_string

from config.celery import app


def test_every_scheduled_and_routed_task_name_is_registered():
    # Given the tasks the beat schedule and the routes name
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    names |= {name for name in settings.CELERY_TASK_ROUTES if "*" not in name}

    # When the worker loads its tasks
    app.loader.import_default_modules()

    # Then each name is one it knows, and is the dotted path of the task (run_periodic and the
    # outbox import tasks by name)
    assert "apps.flashsales.tasks.flash_sales_repair" in names
    assert names - set(app.tasks) == set()
    for name in names:
        assert import_string(name).name == name
