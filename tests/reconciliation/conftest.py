import pytest
from django.conf import settings as django_settings

from shop.resilience import breakers_local_reset
from tests.payments.acquirer_process import SandboxAcquirer
from tests.payments.conftest import channels, shopper  # noqa: F401


@pytest.fixture
def acquirer(settings):
    """A fresh acquirer per test: its settlement files list every capture it ever saw, so a
    shared one would carry earlier tests' payments into this test's day."""
    fresh = SandboxAcquirer(secret=django_settings.ACQUIRER_WEBHOOK_SECRET, seed=11).start()
    settings.ACQUIRER_URL = fresh.url
    settings.RETRY_INITIAL_DELAY = 0.01
    settings.RETRY_MAX_DELAY = 0.05
    breakers_local_reset()
    yield fresh
    fresh.close()
