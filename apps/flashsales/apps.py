from django.apps import AppConfig


class FlashSalesConfig(AppConfig):
    name = "apps.flashsales"
    label = "flashsales"

    def ready(self) -> None:
        from apps.flashsales import metrics, selectors

        # Registered here so the metrics module stays a leaf: it builds families from the
        # statuses it is given and imports nothing back.
        metrics.flash_sales_collector_register(selectors.flash_sales_status)
