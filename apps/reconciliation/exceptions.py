from shop.errors import ShopError, ValidationFailed


class SettlementFileInvalid(ValidationFailed):
    code = "settlement_file_invalid"
    default_message = "The settlement file is malformed."


class SettlementUnavailable(ShopError):
    code = "service_unavailable"
    http_status = 503
    default_message = "The channel's settlement file could not be fetched."
