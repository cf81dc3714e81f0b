"""The people and things the security tests act with: two buyers, a staff member without
permissions, an operator, and buyer A's orders in each state that matters."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from apps.orders import services as orders
from apps.orders.checkout import ticket_create
from apps.orders.models import CheckoutTicket, Order
from apps.payments.models import Payment
from apps.payments.services import payment_pay
from apps.payments.services.ledger import wallet_topup
from shop.models import RateLimitRule
from shop.runtime import runtime_refresh
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory

# Every layer still evaluated on every request, never refusing: one client sending thousands
# of requests from one address would otherwise meet the per-user and login limits at once.
OPEN_LIMIT = {"rate": 1_000_000, "period_seconds": 1.0, "burst": 1_000_000, "enabled": True}
PASSWORD = "correct-horse-battery"  # tests.factories.users.UserFactory's
REFUND_PERMISSION = ("payments", "refund_payment")


def open_rate_limits() -> dict[str, dict[str, Any] | None]:
    """Open every rate-limit layer the way an operator does: a RateLimitRule row per layer,
    then runtime_refresh() (what RateLimitRuleAdmin.save_model does). Returns the operators'
    rules as they were, for restore_rate_limits()."""
    previous = {}
    for name in settings.RATE_LIMITS:
        row = RateLimitRule.objects.filter(name=name).first()
        previous[name] = row and {
            "rate": row.rate, "period_seconds": row.period_seconds, "burst": row.burst,
            "enabled": row.enabled,
        }  # fmt: skip
        RateLimitRule.objects.update_or_create(name=name, defaults=OPEN_LIMIT)
    runtime_refresh()
    return previous


def restore_rate_limits(previous: dict[str, dict[str, Any] | None]) -> None:
    for name, values in previous.items():
        if values is None:
            RateLimitRule.objects.filter(name=name).delete()
        else:
            RateLimitRule.objects.update_or_create(name=name, defaults=values)
    runtime_refresh()


def refund_permission() -> Permission | None:
    """``payments.refund_payment`` if this code base defines it (issue 11), else None."""
    app_label, codename = REFUND_PERMISSION
    return Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()


def operator_user(username: str = "operator"):
    """Staff with the refund permission; a staff superuser where the permission does not
    exist (before issue 11's refunds work)."""
    permission = refund_permission()
    if permission is None:
        return UserFactory(username=username, is_staff=True, is_superuser=True)
    user = UserFactory(username=username, is_staff=True)
    user.user_permissions.add(permission)
    return user


def token_for(user) -> str:
    return Token.objects.get_or_create(user=user)[0].key


def paid_order(user, sku_code: str, *, quantity: int = 1) -> Order:
    order = orders.order_place(user_id=user.id, items=[{"sku": sku_code, "quantity": quantity}])
    payment = payment_pay(order_id=order.id, user_id=user.id, method="wallet")
    assert payment.status == "succeeded", payment.failure_code
    return Order.objects.using(order._state.db).get(id=order.id)


@dataclass
class Holdings:
    """One buyer's things, by the state they are in."""

    pending: Order
    paid: Order
    processing: Order
    payment: Payment
    ticket: CheckoutTicket
    extra_pending: list[Order] = field(default_factory=list)

    def order_ids(self) -> list[int]:
        return [self.pending.id, self.paid.id, self.processing.id] + [
            order.id for order in self.extra_pending
        ]


def buyer_holdings(user, sku_code: str, *, extra_pending: int = 0) -> Holdings:
    """A funded wallet (€1,000), an unpaid order, a paid one, one in processing (paid, its
    fulfilment run), and a queued checkout ticket."""
    wallet_topup(user_id=user.id, amount=100_000, currency="EUR", reference=f"sec:{user.id}",
                 actor="test")  # fmt: skip
    pending = orders.order_place(user_id=user.id, items=[{"sku": sku_code, "quantity": 1}])
    paid = paid_order(user, sku_code)
    processing = paid_order(user, sku_code)
    orders.order_fulfilment_run(order_id=processing.id)
    processing = Order.objects.using(processing._state.db).get(id=processing.id)
    payment = paid.payments.get()
    ticket = ticket_create(
        user_id=user.id, items=[{"sku": sku_code, "quantity": 1}], flash=None, seq=0
    )
    more = [
        orders.order_place(user_id=user.id, items=[{"sku": sku_code, "quantity": 1}])
        for _ in range(extra_pending)
    ]
    return Holdings(pending, paid, processing, payment, ticket, more)


def stocked_sku(stock: int = 200, **product):
    sku = product_with_skus(stock=stock, **product).skus.get()
    sku.price = 1500
    sku.per_user_limit = None
    sku.save(update_fields=["price", "per_user_limit"])
    return sku


def pytest_terminal_summary(terminalreporter) -> None:
    """The schema fuzzer's summary: operations x principals, requests sent, failures."""
    module = sys.modules.get("tests.security.test_schema_fuzz")
    stats = getattr(module, "STATS", None)
    if stats is None or not (stats.sent or stats.unsent):
        return
    terminalreporter.section("schema fuzz summary")
    for line in stats.summary():
        terminalreporter.write_line(line)
