"""A run that breaks half-way is recorded as failed with its error, and the nightly job goes on
with the other channels."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apps.reconciliation.models import ReconciliationRun
from apps.reconciliation.services import reconcile_all, reconcile_day
from apps.reconciliation.services import runs as run_services
from tests.orders.conftest import assert_invariants_hold

pytestmark = [pytest.mark.needs_redis, pytest.mark.django_db(databases="__all__")]


@pytest.fixture
def alpha_breaks(monkeypatch):
    """Reading our side of alpha's day fails with an error nobody planned for."""
    real = run_services.settled_items

    def settled_items(*, channel, start, end):
        if channel == "alpha":
            raise RuntimeError("our side of alpha could not be read")
        return real(channel=channel, start=start, end=end)

    monkeypatch.setattr(run_services, "settled_items", settled_items)


def test_a_run_that_breaks_ends_failed_with_its_error(acquirer, channels, alpha_breaks):
    with pytest.raises(RuntimeError):
        reconcile_day(channel="alpha", business_day=datetime.now(UTC).date())

    run = ReconciliationRun.objects.get()
    assert run.status == "failed" and run.finished_at is not None
    assert run.error == "RuntimeError: our side of alpha could not be read"
    assert_invariants_hold()


def test_the_nightly_job_reconciles_the_other_channels_when_one_breaks(
    acquirer, channels, alpha_breaks
):
    runs = reconcile_all(business_day=datetime.now(UTC).date())

    assert [run.channel for run in runs] == ["beta", "gamma"]
    assert dict(ReconciliationRun.objects.values_list("channel", "status")) == {
        "alpha": "failed",
        "beta": "completed",
        "gamma": "completed",
    }
    assert "could not be read" in ReconciliationRun.objects.get(channel="alpha").error
    assert_invariants_hold()


def test_the_command_reports_a_broken_channel_and_reconciles_the_others(
    acquirer, channels, alpha_breaks
):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="some channels could not be reconciled"):
        call_command("reconcile", "--date", datetime.now(UTC).date().isoformat(),
                     stdout=out, stderr=err)  # fmt: skip
    assert "alpha: RuntimeError: our side of alpha could not be read" in err.getvalue()
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ["beta", "gamma"]
    assert_invariants_hold()
