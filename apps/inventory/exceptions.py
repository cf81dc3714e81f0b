from shop.errors import ShopError, ValidationFailed


class InvalidQuantity(ValidationFailed):
    code = "invalid_quantity"
    default_message = "Quantity must be a positive whole number."


class OutOfStock(ShopError):
    code = "out_of_stock"
    http_status = 409
    default_message = "Sorry, that is sold out."


class ReservationReleased(ShopError):
    """The order's stock was already given back (it expired or was cancelled)."""

    code = "reservation_released"
    http_status = 409
    default_message = "The items of this order are no longer reserved."
