"""Payment writes: the ledger, the TCC coordinator, channels, refunds, buyers' cancels and
refund requests, and webhooks."""

from apps.payments.services.cancellation import order_cancel_by_buyer
from apps.payments.services.coordinator import (
    payment_pay,
    payment_settle_now,
    tcc_recover,
)
from apps.payments.services.ledger import wallet_topup
from apps.payments.services.refund_requests import (
    refund_request_approve,
    refund_request_decline,
    refund_request_file,
    refund_request_review_file,
)
from apps.payments.services.refunds import refund_create, refund_execute, refunds_retry
from apps.payments.services.webhooks import webhook_distrusted, webhook_receive, webhook_verify

__all__ = [
    "order_cancel_by_buyer",
    "payment_pay",
    "payment_settle_now",
    "refund_create",
    "refund_execute",
    "refund_request_approve",
    "refund_request_decline",
    "refund_request_file",
    "refund_request_review_file",
    "refunds_retry",
    "tcc_recover",
    "wallet_topup",
    "webhook_distrusted",
    "webhook_receive",
    "webhook_verify",
]
