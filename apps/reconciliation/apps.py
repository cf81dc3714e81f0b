from django.apps import AppConfig


class ReconciliationConfig(AppConfig):
    name = "apps.reconciliation"
    label = "reconciliation"

    def ready(self) -> None:
        from apps.reconciliation import metrics  # noqa: F401  (registers its live collectors)
