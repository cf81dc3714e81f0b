"""The alert checks are on the beat schedule, which `run_periodic` (embedded profile) runs too."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.utils.module_loading import import_string

from apps.inventory.models import Stock
from shop.models import Alert
from tests.factories.catalog import product_with_skus

ALERT_CHECKS = {
    "alerts-channels-watch": ("apps.payments.tasks.channels_watch", "ALERT_CHANNEL_CHECK_SECONDS"),
    "alerts-checkout-queues-watch": (
        "apps.flashsales.tasks.checkout_queues_watch",
        "ALERT_QUEUE_CHECK_SECONDS",
    ),
    "invariants-audit": ("shop.tasks.invariants_audit", "INVARIANT_AUDIT_SECONDS"),
}


def test_the_alert_checks_are_on_the_beat_schedule(settings):
    for name, (task, interval) in ALERT_CHECKS.items():
        entry = settings.CELERY_BEAT_SCHEDULE[name]
        assert entry["task"] == task
        assert entry["schedule"] == float(getattr(settings, interval))
        assert import_string(task).name == task  # the task's name is its dotted path


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_run_periodic_runs_the_alert_checks_in_process(alert_sink, settings, capsys):
    # Given a broken invariant, and only the alert checks on the schedule
    settings.INVARIANT_AUDIT_RECHECK_SECONDS = 0
    settings.CELERY_BEAT_SCHEDULE = {
        name: settings.CELERY_BEAT_SCHEDULE[name] for name in ALERT_CHECKS
    }
    sku = product_with_skus(stock=10).skus.get()
    Stock.objects.filter(sku=sku).update(available=8, reserved=2)

    # When the embedded profile's scheduler runs them once
    call_command("run_periodic", "--once")

    # Then all three ran, and the audit raised its alert
    assert "running 3 periodic tasks in-process" in capsys.readouterr().out
    assert Alert.objects.filter(kind="invariant").count() == 1
    assert alert_sink.notified("invariant") == 1
