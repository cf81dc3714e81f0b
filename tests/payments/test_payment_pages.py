"""Storefront payment page and the operators' payment admin."""

from __future__ import annotations

import pytest

from apps.orders.models import Order
from apps.payments.models import Account, Payment, Transfer
from apps.payments.services import payment_pay
from shop.models import IdempotencyRecord
from shop.sharding import shard_for_id
from tests.factories.users import UserFactory
from tests.orders.conftest import assert_invariants_hold
from tests.payments.conftest import payment_started_then_crashed

ALL = "__all__"


@pytest.mark.django_db(databases=ALL)
def test_paying_from_the_storefront_with_the_wallet(client, shopper, order):
    client.force_login(shopper)
    page = client.get(f"/orders/{order.id}/pay/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Shop wallet" in html and "€100.00" in html
    key = page.context["pay_key"]

    response = client.post(f"/orders/{order.id}/pay/", {"method": "wallet", "pay_key": key})
    assert response.status_code == 302
    assert Order.objects.using(shard_for_id(order.id)).get(id=order.id).status in (
        "paid",
        "processing",
    )
    again = client.post(
        f"/orders/{order.id}/pay/", {"method": "wallet", "pay_key": key}
    )  # double click
    assert again.status_code == 302
    assert Transfer.objects.filter(kind="wallet_capture").count() == 1
    detail = client.get(f"/orders/{order.id}/").content.decode()
    assert "succeeded" in detail


@pytest.mark.django_db(databases=ALL)
def test_a_failed_payment_explains_and_offers_another_try(client, order):
    from apps.orders import services as orders

    broke = UserFactory(username="broke")  # an empty wallet
    line = order.lines.get()
    unpaid = orders.order_place(user_id=broke.id, items=[{"sku": line.sku_code, "quantity": 1}])
    client.force_login(broke)
    response = client.post(
        f"/orders/{unpaid.id}/pay/", {"method": "wallet", "pay_key": "k"}, follow=True
    )
    assert "does not hold enough money" in response.content.decode()
    assert response.request["PATH_INFO"] == f"/orders/{unpaid.id}/pay/"
    assert (
        Order.objects.using(shard_for_id(unpaid.id)).get(id=unpaid.id).status == "pending_payment"
    )


@pytest.mark.django_db(databases=ALL)
def test_a_pay_key_taken_over_after_a_crash_shows_its_payment_and_never_pays_again(client, order):
    # Given a first request that started a payment (it failed: the wallet is empty) and died
    # before it could remember its answer; its lock ran out
    broke, unpaid, claim, first = payment_started_then_crashed(
        order=order, path="/orders/{order_id}/pay/", key="storefront-pay:k"
    )
    assert first.status == "failed"
    path = f"/orders/{unpaid.id}/pay/"

    # When the browser sends the same form again
    client.force_login(broke)
    response = client.post(path, {"method": "wallet", "pay_key": "k"}, follow=True)

    # Then it is told what became of that payment, and no second payment is started
    payments = Payment.objects.using(shard_for_id(unpaid.id)).filter(order_id=unpaid.id)
    assert list(payments.values_list("id", flat=True)) == [first.id]
    assert "does not hold enough money" in response.content.decode()
    record = IdempotencyRecord.objects.using(claim.using).get(id=claim.record_id)
    assert (record.status, record.response_body["id"]) == ("completed", str(first.id))
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_others_cannot_open_the_payment_page(client, order):
    client.force_login(UserFactory(username="nosy"))
    assert client.get(f"/orders/{order.id}/pay/").status_code == 404


@pytest.mark.django_db(databases=ALL)
def test_payment_admin_pages_and_an_audited_top_up(client, shopper, order, channels):

    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    operator = UserFactory(username="op", is_staff=True, is_superuser=True)
    client.force_login(operator)
    for url in [
        "/admin/payments/paymentchannel/",
        f"/admin/payments/payment/?q={payment.id}",
        f"/admin/payments/payment/{payment.id}/change/",
        "/admin/payments/tcctransaction/",
        "/admin/payments/account/",
        "/admin/payments/transfer/",
        "/admin/payments/account/top-up/",
    ]:
        assert client.get(url).status_code == 200, url
    response = client.post(
        "/admin/payments/account/top-up/",
        {"user": shopper.id, "amount": 2500, "currency": "EUR", "note": "goodwill"},
    )
    assert response.status_code == 302
    transfer = Transfer.objects.filter(kind="topup").latest("id")
    assert transfer.actor.startswith(f"operator:{operator.pk}") and "goodwill" in transfer.actor
    assert Account.objects.get(key=f"wallet:{shopper.id}:EUR").available == 7000 + 2500
