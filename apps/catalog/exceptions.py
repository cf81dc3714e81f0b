from shop.errors import NotFound, ValidationFailed


class ProductNotFound(NotFound):
    code = "not_found"
    default_message = "No such product."


class CategoryNotFound(NotFound):
    code = "not_found"
    default_message = "No such category."


class InvalidCatalogData(ValidationFailed):
    default_message = "The catalog data is not valid."
