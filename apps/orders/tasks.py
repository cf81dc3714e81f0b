"""Order tasks: thin, idempotent, late-acked (settings), retried only through the dead-letter
path so a failure is never silent."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import DatabaseError

from apps.orders import checkout, services

# Attempts at a checkout ticket failing with an unexpected error before it is rejected.
TICKET_MAX_RETRIES = 3

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="apps.orders.tasks.order_process",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def order_process(self, order_id: str, attempt: int = 1, message_id: str | None = None) -> bool:
    """Fulfil a paid order. Any failure goes to the dead-letter queue with its attempt count."""
    try:
        return services.order_fulfilment_run(order_id=int(order_id))
    except Exception as exc:  # noqa: BLE001 - every failure must reach the dead-letter queue
        logger.warning("processing order %s failed (attempt %s): %s", order_id, attempt, exc)
        try:
            services.order_processing_failed(
                order_id=int(order_id), error=f"{type(exc).__name__}: {exc}", attempt=attempt
            )
        except DatabaseError as db_exc:
            # Not even the dead letter could be written (the shard is down): try again later
            # rather than acknowledge a failure nobody recorded.
            raise self.retry(exc=db_exc, countdown=30) from db_exc
        return False


@shared_task(name="apps.orders.tasks.order_dead_letter", acks_late=True, reject_on_worker_lost=True)
def order_dead_letter(
    order_id: str, error: str, attempt: int, message_id: str | None = None
) -> str:
    return services.order_dead_letter_handle(
        order_id=int(order_id), error=error, attempt=attempt, message_id=message_id
    )


@shared_task(name="apps.orders.tasks.order_placed_notify", acks_late=True)
def order_placed_notify(order_id: str, message_id: str | None = None) -> bool:
    return services.order_placed_notify(order_id=int(order_id), message_id=message_id)


@shared_task(name="apps.orders.tasks.orders_expire_sweep")
def orders_expire_sweep() -> dict:
    result = services.orders_expire_sweep()
    return {
        "expired": result.expired,
        "released_orphans": result.released_orphans,
        "committed": result.committed,
        "unreachable": result.unreachable,
    }


@shared_task(
    bind=True,
    name="apps.orders.tasks.checkout_ticket_process",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def checkout_ticket_process(self, ticket_id: str, message_id: str | None = None) -> str:
    """A queued checkout becomes an order or a rejection. An outage is retried, never lost;
    an unexpected error is retried TICKET_MAX_RETRIES times, then ends the ticket as rejected
    (``internal_error``) rather than leaving it queued."""
    try:
        return checkout.ticket_process(ticket_id=int(ticket_id))
    except DatabaseError as exc:
        raise self.retry(exc=exc, countdown=5) from exc
    except Exception as exc:
        if self.request.retries < TICKET_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=5) from exc
        checkout.ticket_fail(ticket_id=int(ticket_id), error=exc)
        return "rejected"


@shared_task(
    bind=True,
    name="apps.orders.tasks.order_stock_return",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def order_stock_return(self, order_id: str, message_id: str | None = None) -> int:
    """The units of a cancelled paid order go back on sale (idempotent; queued by the cancel
    through the outbox in case its own attempt right after the commit failed)."""
    try:
        return services.order_stock_return(order_id=int(order_id))
    except DatabaseError as exc:
        raise self.retry(exc=exc, countdown=30) from exc
