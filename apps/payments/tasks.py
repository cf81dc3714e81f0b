from __future__ import annotations

from celery import shared_task

from apps.payments import services


@shared_task(name="apps.payments.tasks.tcc_recover", ignore_result=True)
def tcc_recover() -> dict[str, int]:
    return services.tcc_recover()


@shared_task(name="apps.payments.tasks.refunds_retry", ignore_result=True)
def refunds_retry() -> int:
    return services.refunds_retry()


@shared_task(name="apps.payments.tasks.refund_request_review_file", acks_late=True)
def refund_request_review_file(request_id: str, message_id: str | None = None) -> bool:
    """File the operators' review item of a buyer's refund request (idempotent)."""
    return services.refund_request_review_file(request_id=int(request_id))


@shared_task(name="apps.payments.tasks.channels_watch", ignore_result=True)
def channels_watch() -> dict[str, float]:
    from apps.payments.services.channels import channels_watch as watch

    return watch()
