"""The operators' dashboard: staff only; shows breakers, flash sales, backlogs, the last
reconciliation run, switches and the last hour's charts; survives a dependency being down."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission

from apps.flashsales.services import flash_sale_start
from apps.orders import services as orders
from apps.payments.services import payment_pay
from apps.payments.services.channels import breaker_for, channels_ensure_sandbox
from apps.payments.services.ledger import wallet_topup
from shop.models import Switch
from shop.review import review_assign, review_file
from shop.runtime import switch_on
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, post_order

ALL = "__all__"
pytestmark = pytest.mark.django_db(databases=ALL)
URL = "/admin/dashboard/"


def test_the_dashboard_is_for_staff_only(client):
    assert client.get(URL).status_code == 302  # anonymous: to the admin's login
    client.force_login(UserFactory(username="buyer-not-staff"))
    refused = client.get(URL)
    assert refused.status_code == 302 and "/admin/login/" in refused["Location"]
    assert b"Payment channels" not in refused.content


def test_staff_see_every_section_and_the_link_from_the_admin(admin_client):
    page = admin_client.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    for heading in ["Payment channels", "Flash sales", "The last hour", "manual review",
                    "Reconciliation", "Degradation switches"]:  # fmt: skip
        assert heading in html
    assert '<meta http-equiv="refresh"' in html
    assert "https://" not in html.split("<body")[1]  # nothing loaded from elsewhere
    assert URL in admin_client.get("/admin/").content.decode()


@pytest.mark.needs_redis
def test_a_breaker_opened_by_failures_shows_as_open(admin_client, settings):
    channels_ensure_sandbox()
    settings.BREAKER_FAILURE_THRESHOLD = 3
    breaker = breaker_for("beta")
    for _ in range(3):
        breaker.record_failure(breaker.acquire())
    assert breaker.state() == "open"

    html = admin_client.get(URL).content.decode()

    row = html.split("<td>beta</td>")[1].split("</tr>")[0]
    assert "breaker open" in row and 'class="bad"' in row
    alpha = html.split("<td>alpha</td>")[1].split("</tr>")[0]
    assert "breaker closed" in alpha


@pytest.mark.needs_redis
def test_a_flash_sale_shows_units_left_queue_and_answers(admin_client):
    sku = product_with_skus(stock=0).skus.get()
    flash_sale_start(sku_code=sku.code, stock=5, per_user_limit=1)
    buyer = api_client(UserFactory(username="flash-buyer"))
    assert post_order(buyer, [{"sku": sku.code, "quantity": 1}]).status_code == 202
    assert post_order(buyer, [{"sku": sku.code, "quantity": 1}]).status_code == 409

    html = admin_client.get(URL).content.decode()

    row = html.split(f"<td>{sku.code}<br>")[1].split("</tr>")[0]
    assert "5 on sale, ≤ 1 each" in row
    assert "<td>4<br>" in row  # units the gate may still admit
    assert "1 / 5,000" in row  # queue length against its bound
    assert "1 admitted; refused: 0 sold out, 1 over limit, 0 queue full" in row


def test_backlogs_and_charts_show_what_happened(admin_client):
    channels_ensure_sandbox()
    review_file(kind="order_processing", reference="o-9", summary="poison task")
    taken, _ = review_file(kind="order_processing", reference="o-10", summary="another")
    review_assign(item_ids=[taken.id], assignee=UserFactory(username="on-it"))  # not waiting
    sku = product_with_skus(stock=10).skus.get()
    buyer = UserFactory(username="charted")
    wallet_topup(user_id=buyer.id, amount=100_000, currency="EUR", reference="t", actor="test")
    for _ in range(3):
        order = orders.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
    payment_pay(order_id=order.id, user_id=buyer.id, method="wallet")

    html = admin_client.get(URL).content.decode()

    assert '<td>order_processing</td><td class="warn">1</td>' in html
    assert "Checkouts per minute (3 orders)" in html
    assert "Payment success rate per minute (1 payments)" in html
    assert 'aria-label="Payment success rate per minute"' in html
    assert 'aria-label="Orders placed per minute"' in html
    # the success rate has one point (this minute; no payment before it), checkouts a line
    assert html.count('<circle cx="') == 1 and html.count("<polyline") == 1


def test_switches_flip_from_the_dashboard_for_operators_allowed_to(client, admin_client):
    response = admin_client.post(f"{URL}switches/read_only/", {"on": "1"})
    assert response.status_code == 302
    assert Switch.objects.get(name="read_only").on and switch_on("read_only")
    assert "ON" in admin_client.get(URL).content.decode()
    admin_client.post(f"{URL}switches/read_only/", {"on": "0"})
    assert not switch_on("read_only")

    # Staff without the permission cannot
    viewer = UserFactory(username="viewer", is_staff=True)
    client.force_login(viewer)
    assert client.post(f"{URL}switches/widgets_off/", {"on": "1"}).status_code == 403
    assert not Switch.objects.filter(name="widgets_off", on=True).exists()
    viewer.user_permissions.add(Permission.objects.get(codename="change_switch"))
    assert client.post(f"{URL}switches/no-such-switch/", {"on": "1"}).status_code == 302
    assert not Switch.objects.filter(name="no-such-switch").exists()


@pytest.mark.needs_broker
def test_a_dependency_down_blanks_only_its_own_section(admin_client, settings):
    channels_ensure_sandbox()
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"
    settings.CELERY_BROKER_CONNECTION_TIMEOUT = 0.5

    page = admin_client.get(URL)

    assert page.status_code == 200
    html = page.content.decode()
    assert "Broker unavailable" in html
    assert "<td>alpha</td>" in html  # the channels section still renders


@pytest.mark.django_db(databases=ALL, transaction=True)  # delivery runs after commit
def test_recent_alerts_are_listed_with_their_occurrences(admin_client, alert_sink):
    from shop.alerts import alert_raise

    for _ in range(3):
        alert_raise(kind="breaker_open", key="channel:beta", subject="Channel beta: breaker open",
                    severity="warning")  # fmt: skip

    html = admin_client.get(URL).content.decode()

    section = html.split('<section id="alerts">')[1].split("</section>")[0]
    assert "Channel beta: breaker open" in section
    assert "breaker_open · channel:beta" in section
    assert "<td>3</td>" in section  # three occurrences, one notification
    assert alert_sink.notified("breaker_open") == 1
