from shop.errors import NotFound, ShopError, ValidationFailed


class OrderNotFound(NotFound):
    default_message = "No such order."


class InvalidOrderState(ShopError):
    code = "invalid_state"
    http_status = 409
    default_message = "The order cannot do that in its current state."


class CheckoutInvalid(ValidationFailed):
    default_message = "Some items cannot be ordered."


class PurchaseLimitExceeded(ShopError):
    code = "purchase_limit_exceeded"
    http_status = 409
    default_message = "That is more than one buyer may order of this item."


class FulfilmentFailed(Exception):
    """A fulfilment step cannot succeed without an operator (a poison task)."""
