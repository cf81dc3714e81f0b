"""Paying with the wallet: TCC over the ledger and the order's shard."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.cache import cache
from django.db import connections

from apps.orders.models import Order
from apps.payments.models import Account, Payment, TccTransaction, Transfer
from apps.payments.services import payment_pay
from apps.payments.services.ledger import wallet_topup
from shop.sharding import shard_for_id
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.payments.conftest import payment_started_then_crashed

ALL = "__all__"


def _wallet(user) -> Account:
    return Account.objects.get(key=f"wallet:{user.id}:EUR")


def _order(order) -> Order:
    return Order.objects.using(shard_for_id(order.id)).get(id=order.id)


@pytest.mark.django_db(databases=ALL)
def test_a_wallet_payment_moves_the_money_once_and_pays_the_order(shopper, order):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")

    assert payment.status == "succeeded"
    assert (payment.amount, payment.captured_amount) == (3000, 3000)
    assert _order(order).status == "paid"
    wallet = _wallet(shopper)
    assert (wallet.available, wallet.frozen) == (7000, 0)
    assert Account.objects.get(key="merchant:EUR").available == 3000
    assert set(
        Transfer.objects.filter(reference=f"pay-{payment.id}").values_list("kind", flat=True)
    ) == {
        "wallet_freeze",
        "wallet_capture",
    }
    assert TccTransaction.objects.get(payment_id=payment.id).status == "confirmed"
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_insufficient_funds_fails_cleanly_and_the_order_stays_payable(shopper, order):
    poor = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert poor.status == "succeeded"  # €100 covers €30; now drain it and try a second order
    from apps.orders import services as orders
    from tests.factories.catalog import product_with_skus

    expensive = product_with_skus(stock=5).skus.get()
    expensive.price = 50_000
    expensive.save(update_fields=["price"])
    cache.clear()  # factories bypass the catalog services' invalidation
    second = orders.order_place(user_id=shopper.id, items=[{"sku": expensive.code, "quantity": 1}])

    failed = payment_pay(order_id=second.id, user_id=shopper.id, method="wallet")
    assert (failed.status, failed.failure_code) == ("failed", "insufficient_funds")
    assert _order(second).status == "pending_payment"
    assert _order(second).payment_started_at is None
    assert (_wallet(shopper).available, _wallet(shopper).frozen) == (7000, 0)

    wallet_topup(user_id=shopper.id, amount=50_000, currency="EUR", reference="more", actor="t")
    retried = payment_pay(order_id=second.id, user_id=shopper.id, method="wallet")
    assert retried.status == "succeeded"
    assert _order(second).status == "paid"
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_api_pays_and_replays_by_key(shopper, order):
    client = api_client(shopper)
    key = new_key()
    first = client.post(
        f"/api/v1/orders/{order.id}/payments/",
        {"method": "wallet"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    again = client.post(
        f"/api/v1/orders/{order.id}/payments/",
        {"method": "wallet"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=key,
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["status"] == "succeeded"
    assert again.json() == first.json()
    other = client.post(
        f"/api/v1/orders/{order.id}/payments/",
        {"method": "wallet"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert other.status_code == 409
    assert other.json()["code"] == "invalid_state"
    assert Payment.objects.using(shard_for_id(order.id)).count() == 1
    body = client.get(f"/api/v1/orders/{order.id}/").json()
    assert body["status"] in ("paid", "processing")
    assert [p["status"] for p in body["payments"]] == ["succeeded"]
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_api_reports_the_payment_a_crashed_request_started_instead_of_paying_again(order):
    # Given a request that started a payment (failed: empty wallet) and died before answering
    key = new_key()
    broke, unpaid, _, first = payment_started_then_crashed(
        order=order, path="/api/v1/orders/{order_id}/payments/", key=key
    )
    path = f"/api/v1/orders/{unpaid.id}/payments/"

    # When the client retries with the same key, then it gets that payment, and only that one
    response = api_client(broke).post(
        path, {"method": "wallet"}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )
    assert response.status_code == 201
    assert (response.json()["id"], response.json()["status"]) == (str(first.id), "failed")
    payments = Payment.objects.using(shard_for_id(unpaid.id)).filter(order_id=unpaid.id)
    assert list(payments.values_list("id", flat=True)) == [first.id]
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "payload", [{}, {"method": "cash"}, {"method": "card", "channel": "no such"}]
)
def test_bad_payment_requests_are_400(shopper, order, payload):
    response = api_client(shopper).post(
        f"/api/v1/orders/{order.id}/payments/",
        payload,
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert response.status_code == 400
    assert not Payment.objects.using(shard_for_id(order.id)).exists()


@pytest.mark.django_db(databases=ALL)
def test_others_orders_cannot_be_paid(shopper, order):
    from tests.factories.users import UserFactory

    stranger = api_client(UserFactory(username="stranger"))
    response = stranger.post(
        f"/api/v1/orders/{order.id}/payments/",
        {"method": "wallet"},
        format="json",
        HTTP_IDEMPOTENCY_KEY=new_key(),
    )
    assert response.status_code == 404


@pytest.mark.django_db(databases=ALL)
def test_an_unpaid_order_with_a_payment_running_neither_expires_nor_cancels(shopper, order):
    from datetime import timedelta

    from django.utils import timezone

    from apps.orders import services as orders
    from apps.orders.exceptions import InvalidOrderState

    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(
        payment_started_at=timezone.now(), expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert orders.order_expire(order_id=order.id) is False
    with pytest.raises(InvalidOrderState):
        orders.order_cancel(order_id=order.id, actor="test")


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_thirty_concurrent_payments_of_one_order_capture_once(shopper, order):
    clients = [api_client(shopper) for _ in range(30)]

    def pay(client):
        try:
            response = client.post(
                f"/api/v1/orders/{order.id}/payments/",
                {"method": "wallet"},
                format="json",
                HTTP_IDEMPOTENCY_KEY=new_key(),
            )
            return response.status_code, response.json().get("status") or response.json()["code"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=15) as pool:
        outcomes = list(pool.map(pay, clients))

    succeeded = [o for o in outcomes if o == (201, "succeeded")]
    assert len(succeeded) == 1, outcomes
    assert all(code in (409,) for code, _ in outcomes if (code, _) not in succeeded)
    payments = Payment.objects.using(shard_for_id(order.id))
    assert payments.filter(status="succeeded").count() == 1
    assert Transfer.objects.filter(kind="wallet_capture").count() == 1
    wallet = _wallet(shopper)
    assert (wallet.available, wallet.frozen) == (7000, 0)
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_payment_request_failing_after_it_started_the_payment_is_resumed_by_its_retry(
    shopper, order, monkeypatch
):
    from django.db import OperationalError

    from apps.payments.services import coordinator

    def lost(payment):
        raise OperationalError("the default database went away")

    # Given a request that started the payment (the order's try committed), then failed
    # before its next step, the wallet's transaction, could run
    path, key = f"/api/v1/orders/{order.id}/payments/", new_key()
    client = api_client(shopper)
    with monkeypatch.context() as patch:
        patch.setattr(coordinator, "_wallet_pay_and_decide", lost)
        failed = client.post(path, {"method": "wallet"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert failed.status_code == 503
    (started,) = Payment.objects.using(shard_for_id(order.id)).filter(order_id=order.id)

    # When the client retries with the same key, then it is told about that payment: no
    # second payment, no "payment in progress" refusal for its own payment
    retried = client.post(path, {"method": "wallet"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    assert retried.status_code == 201, retried.json()
    assert retried.json()["id"] == str(started.id)
    payments = Payment.objects.using(shard_for_id(order.id)).filter(order_id=order.id)
    assert list(payments.values_list("id", flat=True)) == [started.id]
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_declined_wallet_payment_is_cancelled_and_its_wallet_branch_fenced(shopper, order):
    from apps.orders import services as orders
    from apps.payments.models import TccBranch
    from apps.payments.services import coordinator
    from shop.models import TccFence
    from tests.factories.users import UserFactory

    broke = UserFactory(username="broke")  # no wallet at all
    sku = order.lines.get().sku_code
    order = orders.order_place(user_id=broke.id, items=[{"sku": sku, "quantity": 1}])
    payment = payment_pay(order_id=order.id, user_id=broke.id, method="wallet")

    assert (payment.status, payment.failure_code) == ("failed", "insufficient_funds")
    tcc = TccTransaction.objects.get(payment_id=payment.id)
    assert tcc.status == "cancelled"
    assert dict(TccBranch.objects.filter(transaction=tcc).values_list("branch", "status")) == {
        "order": "cancelled",
        "wallet": "cancelled",
    }
    # nothing was frozen and nothing may be: the wallet's fence is `suspended`, so the wallet
    # step run late (a slow duplicate) is refused
    assert TccFence.objects.get(xid=tcc.xid, branch="wallet").status == "suspended"
    with pytest.raises(coordinator._AlreadyDecided):
        coordinator._wallet_pay_and_decide(payment)
    assert not Transfer.objects.filter(reference=tcc.xid).exists()
    assert _order(order).payment_started_at is None
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_payment_body_is_what_the_payment_serializer_writes(shopper, order):
    # Given a wallet payment as the hot path builds its reply, and one read back with a
    # channel attempt recorded against it
    from apps.payments.api import PaymentOutputSerializer, payment_body
    from apps.payments.models import PaymentAttempt
    from apps.payments.selectors import payment_get

    settled = {}
    payment_pay(
        order_id=order.id, user_id=shopper.id, method="wallet",
        on_settled=lambda p: settled.update(body=payment_body(p), payment=p),
    )  # fmt: skip
    alias = shard_for_id(order.id)
    PaymentAttempt.objects.using(alias).create(
        payment_id=settled["payment"].id, user_id=shopper.id, channel="alpha",
        outcome="declined", reason="first choice", latency_ms=42,
    )  # fmt: skip
    read_back = payment_get(payment_id=settled["payment"].id)

    # Then each body is the serializer's (the API's documented schema), field for field
    assert settled["body"] == PaymentOutputSerializer(settled["payment"]).data
    assert payment_body(read_back) == PaymentOutputSerializer(read_back).data
    assert settled["body"]["status"] == "succeeded" and settled["body"]["attempts"] == []
    assert payment_body(read_back)["attempts"][0]["latency_ms"] == 42
