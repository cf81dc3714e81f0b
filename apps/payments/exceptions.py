from shop.errors import NotFound, ShopError, ValidationFailed


class InsufficientFunds(ShopError):
    code = "insufficient_funds"
    http_status = 402
    default_message = "The wallet does not hold enough money."


class PaymentDeclined(ShopError):
    code = "payment_declined"
    http_status = 402
    default_message = "The payment was declined."


class PaymentInProgress(ShopError):
    code = "payment_in_progress"
    http_status = 409
    default_message = "A payment of this order is already in progress or done."


class NoChannelAvailable(ShopError):
    code = "service_unavailable"
    http_status = 503
    default_message = "No payment channel can take this payment right now."

    def __init__(self, message: str | None = None, **kwargs: object) -> None:
        kwargs.setdefault("retry_after", 30)
        super().__init__(message, **kwargs)


class RefundInvalid(ValidationFailed):
    default_message = "This refund is not possible."


class RefundNotAllowed(ShopError):
    code = "invalid_state"
    http_status = 409
    default_message = "This order cannot be refunded."


class PaymentNotFound(NotFound):
    default_message = "No such payment."


class LedgerUnbalanced(Exception):
    """A posting whose entries do not sum to zero: a programming error, never posted."""
