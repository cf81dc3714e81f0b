from shop.errors import ShopError, ValidationFailed


class InsufficientFunds(ShopError):
    code = "insufficient_funds"
    http_status = 402
    default_message = "The wallet does not hold enough money."


class PaymentInProgress(ShopError):
    code = "payment_in_progress"
    http_status = 409
    default_message = "A payment of this order is already in progress or done."


class RefundInvalid(ValidationFailed):
    default_message = "This refund is not possible."


class RefundNotAllowed(ShopError):
    code = "invalid_state"
    http_status = 409
    default_message = "This order cannot be refunded."


class LedgerUnbalanced(Exception):
    """A posting whose entries do not sum to zero: a programming error, never posted."""
