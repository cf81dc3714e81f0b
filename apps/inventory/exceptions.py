from shop.errors import ValidationFailed


class InvalidQuantity(ValidationFailed):
    code = "invalid_quantity"
    default_message = "Quantity must be a positive whole number."
