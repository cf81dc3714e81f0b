from django.apps import AppConfig


class UsersConfig(AppConfig):
    """Buyer and operator accounts: registration, login, API tokens (Django's User model)."""

    name = "apps.users"
    label = "users"
