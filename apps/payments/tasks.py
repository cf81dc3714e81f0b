from __future__ import annotations

from celery import shared_task

from apps.payments import services


@shared_task(name="apps.payments.tasks.tcc_recover", ignore_result=True)
def tcc_recover() -> dict[str, int]:
    return services.tcc_recover()


@shared_task(name="apps.payments.tasks.refunds_retry", ignore_result=True)
def refunds_retry() -> int:
    return services.refunds_retry()


@shared_task(name="apps.payments.tasks.channels_watch", ignore_result=True)
def channels_watch() -> dict[str, float]:
    from apps.payments.services.channels import channels_watch as watch

    return watch()
