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


def payment_started_then_crashed(*, order, path: str, key: str):
    """A buyer with an empty wallet whose first pay request (``path``, Idempotency-Key
    ``key``) started a wallet payment — it failed — and died before remembering its answer,
    its key's lock run out. Returns (buyer, unpaid order, claim, first payment)."""
    from datetime import timedelta

    from django.utils import timezone

    from apps.payments.services import payment_pay
    from shop.idempotency import idempotency_begin, request_fingerprint
    from shop.models import IdempotencyRecord
    from shop.sharding import shard_for_user

    broke = UserFactory(username="broke")
    line = order.lines.get()
    unpaid = orders.order_place(user_id=broke.id, items=[{"sku": line.sku_code, "quantity": 1}])
    path = path.format(order_id=unpaid.id)
    claim = idempotency_begin(
        using=shard_for_user(broke.id),
        user_id=broke.id,
        key=key,
        fingerprint=request_fingerprint(method="POST", path=path, body={"method": "wallet"}),
    )
    first = payment_pay(
        order_id=unpaid.id,
        user_id=broke.id,
        method="wallet",
        on_started=lambda payment: claim.attach(str(payment.id)),
    )
    IdempotencyRecord.objects.using(claim.using).filter(id=claim.record_id).update(
        locked_until=timezone.now() - timedelta(seconds=1)
    )
    return broke, unpaid, claim, first


# --- Refunds: operators, held processing, counting what was written ----------------------------


def support_user(username: str = "support", *, permitted: bool = True, staff: bool = True):
    """A staff member who is NOT a superuser; with ``permitted`` their group ("support") grants
    the refund permission and the views the refund admin needs."""
    from django.contrib.auth.models import Group, Permission

    user = UserFactory(username=username, is_staff=staff, is_superuser=False)
    codenames = ["view_payment", "view_refundrequest", "view_refund"]
    if permitted:
        codenames.append("refund_payment")
    group, _ = Group.objects.get_or_create(name="support" if permitted else "viewers")
    group.permissions.set(
        Permission.objects.filter(content_type__app_label="payments", codename__in=codenames)
    )
    user.groups.add(group)
    return user


@pytest.fixture
def operator(db):
    """Support staff holding payments.refund_payment through a group (not a superuser)."""
    return support_user()


@pytest.fixture
def processing_held(monkeypatch):
    """A paid order stays `paid` until a test runs its processing: the outbox's fast path is
    off (in the embedded profile it would run the processing task at once); what a test needs
    of the outbox it runs itself."""
    from shop.outbox import broker_health

    monkeypatch.setattr(broker_health, "available", lambda: False)


def written_counts() -> dict[str, int]:
    """Rows of everything a refund, a cancel or a refund request may write, on every database."""
    from apps.orders.models import OrderEvent
    from apps.payments.models import Refund, RefundRequest, Transfer
    from shop.models import IdempotencyRecord, ManualReviewItem, OutboxMessage
    from shop.sharding import order_shard_aliases

    counts = {
        "transfers": Transfer.objects.count(),
        "review_items": ManualReviewItem.objects.count(),
    }
    for model in (Refund, RefundRequest, OrderEvent, IdempotencyRecord, OutboxMessage):
        counts[model.__name__] = sum(
            model.objects.using(alias).count() for alias in order_shard_aliases()
        )
    return counts
