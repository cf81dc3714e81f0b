from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "apps.orders"
    label = "orders"

    def ready(self) -> None:
        from apps.flashsales.selectors import flash_holdings_source_set
        from apps.orders import checks  # noqa: F401  (registers the system checks)
        from apps.orders.checkout import flash_sale_holdings

        # The flash-sale app rebuilds a gate from what buyers hold here; it never imports
        # this app (which calls it), so the source is handed over at start-up.
        flash_holdings_source_set(flash_sale_holdings)
