from shop.errors import ShopError, ValidationFailed

# The field error for a name an account has already, in this or another case or width.
USERNAME_TAKEN = "A user with that username already exists."


class RegistrationInvalid(ValidationFailed):
    default_message = "The registration details are not valid."


class InvalidCredentials(ShopError):
    code = "invalid_credentials"
    http_status = 400
    default_message = "Unable to log in with the provided credentials."
