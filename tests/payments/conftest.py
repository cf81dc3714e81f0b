from __future__ import annotations

import pytest
from django.conf import settings as django_settings

from apps.orders import services as orders
from apps.payments.services.channels import channels_ensure_sandbox
from apps.payments.services.ledger import wallet_topup
from shop.resilience import breakers_local_reset
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.payments.acquirer_process import SandboxAcquirer


@pytest.fixture(scope="session")
def sandbox():
    """The sandbox acquirer as a real process, shared by the payment tests (reset per test)."""
    acquirer = SandboxAcquirer(secret=django_settings.ACQUIRER_WEBHOOK_SECRET, seed=7).start()
    yield acquirer
    acquirer.close()


@pytest.fixture
def acquirer(sandbox, settings):
    """Healthy channels, the shop pointed at them, and fast breaker/retry timings."""
    sandbox.reset()
    settings.ACQUIRER_URL = sandbox.url
    settings.RETRY_INITIAL_DELAY = 0.01
    settings.RETRY_MAX_DELAY = 0.05
    settings.BREAKER_RESET_TIMEOUT = 1.0
    settings.BREAKER_CALL_TIMEOUT = 1.0
    breakers_local_reset()
    yield sandbox
    sandbox.reset()


@pytest.fixture
def channels(db):
    channels_ensure_sandbox()


@pytest.fixture
def shopper(db):
    """A buyer with €100.00 in the wallet."""
    user = UserFactory(username="shopper", email="shopper@example.com")
    wallet_topup(user_id=user.id, amount=10_000, currency="EUR", reference=f"t:{user.id}",
                 actor="test")  # fmt: skip
    return user


@pytest.fixture
def order(shopper):
    """An unpaid order of the shopper: 2 × €15.00."""
    sku = product_with_skus(stock=10).skus.get()
    sku.price = 1500
    sku.save(update_fields=["price"])
    return orders.order_place(user_id=shopper.id, items=[{"sku": sku.code, "quantity": 2}])
