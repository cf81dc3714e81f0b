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
