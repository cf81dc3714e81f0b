from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operators' console: one live page across every app (payments, flash sales, queues,
    dead letters, reviews, reconciliation, switches). It only reads through the other apps'
    selectors and writes through their services."""

    name = "apps.console"
    label = "console"
    verbose_name = "Operator console"
