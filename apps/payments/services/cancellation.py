"""A buyer cancels their own order: an unpaid one (its stock is released), or a paid one whose
fulfilment has not started (it is refunded in full, and its stock goes back on sale).

The paid path lives here, not in orders, because it needs the refund: the order moves
`paid → cancelled` and the pending full refund is recorded in ONE transaction on the order's
shard (:func:`apps.orders.services.order_cancel_paid` runs our writer inside it), so a crash
can never leave a cancelled paid order without its refund. After the commit the refund is
sent through the channel the order was paid with (or back to the wallet); one the channel
cannot take yet stays `pending` and :func:`~apps.payments.services.refunds.refunds_retry`
finishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import DatabaseError

from apps.orders import services as orders
from apps.orders.exceptions import InvalidOrderState, OrderNotFound
from apps.orders.models import Order
from apps.orders.selectors import order_get
from apps.payments.services.refunds import (
    buyer_actor,
    captured_payment_locked,
    refund_execute,
    refund_write,
    refundable_amount,
)

logger = logging.getLogger(__name__)

S = orders.S
UNPAID_CANCEL_REASON = "cancelled by the buyer"
PAID_CANCEL_REASON = "cancelled by the buyer before fulfilment"
# Too late to cancel: the buyer may ask for a refund instead (refund requests).
IN_FULFILMENT = {S.PROCESSING, S.FULFILLED, S.PARTIALLY_REFUNDED}


def order_cancel_by_buyer(
    *,
    order_id: int,
    user_id: int,
    on_cancelled: Callable[[Order], None] | None = None,
) -> Order:
    """Cancel the buyer's own order. ``on_cancelled(order)`` runs inside the cancelling
    transaction on the order's shard (the idempotency record is completed there).

    Unpaid: :func:`apps.orders.services.order_cancel` (stock released). Paid and not yet in
    fulfilment: cancelled and refunded in full (see the module). Raises OrderNotFound (not the
    caller's order) or InvalidOrderState (any other status, or the processing task moved it
    on first: exactly one of the two wins)."""
    order = order_get(order_id=order_id, user_id=user_id)
    if order is None:
        raise OrderNotFound()
    if order.status in IN_FULFILMENT:
        raise InvalidOrderState(
            "This order is already being prepared, so it can no longer be cancelled; you can "
            "request a refund instead.",
            extra={"status": order.status},
        )
    if order.status != S.PAID:
        try:
            return orders.order_cancel(
                order_id=order_id,
                owner_id=user_id,
                actor=orders.user_actor(user_id),
                reason=UNPAID_CANCEL_REASON,
                on_cancelled=on_cancelled,
            )
        except InvalidOrderState as exc:
            if exc.extra.get("status") != S.PAID:
                raise
            # Its payment was captured a moment ago: cancel it as the paid order it now is.
    return _cancel_paid(order_id=order_id, user_id=user_id, on_cancelled=on_cancelled)


def _cancel_paid(
    *, order_id: int, user_id: int, on_cancelled: Callable[[Order], None] | None
) -> Order:
    refund_ids: list[int] = []

    def refund_in_full(order: Order) -> None:  # inside the cancel's shard transaction
        payment = captured_payment_locked(order)
        # What is left after any refund already under way (an operator's partial refund of
        # this paid order still pending at its channel).
        left = refundable_amount(payment) if payment is not None else 0
        if left > 0:
            refund = refund_write(
                order=order,
                payment=payment,
                amount=left,
                actor=buyer_actor(user_id),
                reason=PAID_CANCEL_REASON,
            )
            refund_ids.append(refund.id)
        if on_cancelled is not None:
            on_cancelled(order)

    order = orders.order_cancel_paid(
        order_id=order_id,
        owner_id=user_id,
        actor=orders.user_actor(user_id),
        reason=PAID_CANCEL_REASON,
        in_transaction=refund_in_full,
    )
    for refund_id in refund_ids:
        # The cancel and the refund it owes are committed: whatever happens now, a refund
        # left pending (channel down, or the ledger's database away) is finished by
        # refunds_retry, so this answer does not fail over it.
        try:
            status = refund_execute(refund_id=refund_id)
        except DatabaseError:
            logger.exception("order %s cancelled; refund %s waits for the retry", order.id,
                             refund_id)  # fmt: skip
            continue
        logger.info("order %s cancelled by its buyer; refund %s %s", order.id, refund_id, status)
    return order
