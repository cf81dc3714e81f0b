from shop.errors import ValidationFailed


class FlashSaleInvalid(ValidationFailed):
    default_message = "That flash sale cannot be started."
