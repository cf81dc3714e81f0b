from celery import shared_task

from shop.cache import pending_invalidations_retry


@shared_task(name="shop.tasks.cache_invalidations_retry", ignore_result=True)
def cache_invalidations_retry() -> int:
    return pending_invalidations_retry()


@shared_task(name="shop.tasks.outbox_relay", ignore_result=True)
def outbox_relay() -> int:
    from shop.outbox import outbox_relay as relay

    return relay()


@shared_task(name="shop.tasks.idempotency_cleanup", ignore_result=True)
def idempotency_cleanup() -> int:
    from shop.idempotency import idempotency_cleanup as cleanup

    return cleanup()


@shared_task(name="shop.tasks.outbox_purge", ignore_result=True)
def outbox_purge() -> int:
    from datetime import timedelta

    from django.conf import settings

    from shop.outbox import outbox_purge_published

    return outbox_purge_published(older_than=timedelta(days=settings.OUTBOX_KEEP_PUBLISHED_DAYS))


@shared_task(name="shop.tasks.tcc_fences_cleanup", ignore_result=True)
def tcc_fences_cleanup() -> int:
    from shop.tcc import fences_cleanup

    return fences_cleanup()


@shared_task(
    bind=True, name="shop.tasks.alert_deliver", acks_late=True, ignore_result=True, max_retries=None
)
def alert_deliver(self, alert_id: int, targets: list[str] | None = None) -> list[str]:
    """Deliver an alert; targets that failed are tried again, alone, a few times."""
    from django.conf import settings
    from django.db import DatabaseError

    from shop.alerts import alert_deliver as deliver

    retry = not self.request.is_eager and self.request.retries < settings.ALERT_DELIVERY_RETRIES
    try:
        failed = deliver(alert_id=alert_id, targets=targets)
    except DatabaseError as exc:  # the alert could not be read: try again later
        if not retry:
            raise
        raise self.retry(exc=exc, countdown=settings.ALERT_DELIVERY_RETRY_DELAY) from exc
    if failed and retry:
        raise self.retry(
            kwargs={"alert_id": alert_id, "targets": failed},
            countdown=settings.ALERT_DELIVERY_RETRY_DELAY,
        )
    return failed


@shared_task(name="shop.tasks.invariants_audit", ignore_result=True)
def invariants_audit() -> dict[str, int]:
    from shop.audit import invariants_audit as audit

    return audit()
