from shop.errors import NotFound, ShopError, ValidationFailed


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


class RefundRequestOpen(ShopError):
    code = "refund_request_open"
    http_status = 409
    default_message = "A refund request for this order is already waiting for the shop's answer."


class RefundRequestNotFound(NotFound):
    default_message = "No such refund request."


class RefundRequestDecided(ShopError):
    code = "invalid_state"
    http_status = 409
    default_message = "This refund request has already been decided."


class LedgerUnbalanced(Exception):
    """A posting whose entries do not sum to zero: a programming error, never posted."""
