from __future__ import annotations

from apps.payments.models import Account, Payment, Refund
from apps.payments.services.ledger import wallet_account
from shop.sharding import shard_for_id
from shop.sharding.ids import id_is_plausible


def payment_get(*, payment_id: int, user_id: int | None = None) -> Payment | None:
    if not id_is_plausible(payment_id):
        return None
    queryset = Payment.objects.using(shard_for_id(payment_id)).filter(id=payment_id)
    if user_id is not None:
        queryset = queryset.filter(user_id=user_id)
    return queryset.prefetch_related("attempts").first()


def refund_get(*, refund_id: int) -> Refund | None:
    if not id_is_plausible(refund_id):
        return None
    return Refund.objects.using(shard_for_id(refund_id)).filter(id=refund_id).first()


def wallet_get(*, user_id: int, currency: str = "EUR") -> Account:
    """The buyer's wallet (created empty on first sight)."""
    return wallet_account(user_id=user_id, currency=currency)
