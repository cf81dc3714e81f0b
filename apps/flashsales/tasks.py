"""Flash-sale periodic tasks. Their names are the ones they had in the orders app: the beat
schedule (settings, and django_celery_beat's rows synced from it) refers to them by name."""

from __future__ import annotations

from celery import shared_task

from apps.flashsales import services


@shared_task(name="apps.orders.tasks.flash_sales_repair", ignore_result=True)
def flash_sales_repair() -> int:
    return services.flash_sales_repair()


@shared_task(name="apps.orders.tasks.checkout_queues_watch", ignore_result=True)
def checkout_queues_watch() -> dict[str, int]:
    return services.checkout_queues_watch()
