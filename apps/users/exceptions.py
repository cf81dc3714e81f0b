from shop.errors import ShopError, ValidationFailed


class RegistrationInvalid(ValidationFailed):
    default_message = "The registration details are not valid."


class InvalidCredentials(ShopError):
    code = "invalid_credentials"
    http_status = 400
    default_message = "Unable to log in with the provided credentials."
