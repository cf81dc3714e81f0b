"""Payment writes: the ledger, the TCC coordinator, channels, refunds and webhooks."""

from apps.payments.services.coordinator import (
    payment_pay,
    payment_settle_now,
    tcc_recover,
)
from apps.payments.services.ledger import wallet_topup
from apps.payments.services.refunds import refund_create, refund_execute, refunds_retry
from apps.payments.services.webhooks import webhook_distrusted, webhook_receive, webhook_verify

__all__ = [
    "payment_pay",
    "payment_settle_now",
    "refund_create",
    "refund_execute",
    "refunds_retry",
    "tcc_recover",
    "wallet_topup",
    "webhook_distrusted",
    "webhook_receive",
    "webhook_verify",
]
