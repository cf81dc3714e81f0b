from celery import shared_task

from shop.cache import pending_invalidations_retry


@shared_task(name="shop.tasks.cache_invalidations_retry", ignore_result=True)
def cache_invalidations_retry() -> int:
    return pending_invalidations_retry()
