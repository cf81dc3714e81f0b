"""The Celery application. Settings come from Django settings with the CELERY_ prefix."""

import os

from celery import Celery

from shop.logs import celery_log_context_connect

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Tasks log with the request, user, order and payment ids of whatever caused them.
celery_log_context_connect()
