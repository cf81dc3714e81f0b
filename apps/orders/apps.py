from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "apps.orders"
    label = "orders"

    def ready(self) -> None:
        from apps.orders import (
            checks,  # noqa: F401  (registers the system checks)
            metrics,  # noqa: F401  (registers its live collectors)
        )
