"""Flash-sale periodic tasks. A task's name is its dotted path (``run_periodic`` and the outbox
import it by name). They were ``apps.orders.tasks.*`` before the flash sale had its own app:
the beat schedule in settings names them anew, and django_celery_beat updates its rows from it
when beat starts."""

from __future__ import annotations

from celery import shared_task

from apps.flashsales import services


@shared_task(name="apps.flashsales.tasks.flash_sales_repair", ignore_result=True)
def flash_sales_repair() -> int:
    return services.flash_sales_repair()


@shared_task(name="apps.flashsales.tasks.checkout_queues_watch", ignore_result=True)
def checkout_queues_watch() -> dict[str, int]:
    return services.checkout_queues_watch()
