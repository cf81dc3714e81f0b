"""Task names are persisted (the beat schedule's django_celery_beat rows, queued outbox rows):
moving a task to another module must keep every scheduled and routed name registered."""

from django.conf import settings

from config.celery import app


def test_every_scheduled_and_routed_task_name_is_registered():
    # Given the tasks the beat schedule and the routes name
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    names |= {name for name in settings.CELERY_TASK_ROUTES if "*" not in name}

    # When the worker loads its tasks
    app.loader.import_default_modules()

    # Then each name is one it knows (the flash-sale ones kept their orders-app names)
    assert "apps.orders.tasks.flash_sales_repair" in names
    assert names - set(app.tasks) == set()
