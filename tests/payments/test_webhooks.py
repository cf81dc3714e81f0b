"""Webhooks: authenticated, fresh, applied once — and only ever a reason to ask the channel."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from apps.orders.models import Order
from apps.payments.models import Payment, TccTransaction, WebhookEvent
from apps.payments.services import payment_pay
from apps.payments.services.webhooks import channel_webhook_secret, webhook_signature
from shop.sharding import shard_for_id
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"
URL = "/api/v1/payments/webhooks/alpha/"


def _post(client, event, *, timestamp=None, secret=None, signature=None):
    body = json.dumps(event).encode()
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = signature or webhook_signature(
        secret=secret or channel_webhook_secret("alpha"), timestamp=timestamp, body=body
    )
    return client.post(
        URL,
        body,
        content_type="application/json",
        HTTP_X_ACQUIRER_TIMESTAMP=timestamp,
        HTTP_X_ACQUIRER_SIGNATURE=signature,
    )


def _event(payment_id="1", **fields):
    return {
        "event_id": str(uuid.uuid4()),
        "type": "payment.captured",
        "channel": "alpha",
        "payment_id": str(payment_id),
        "status": "captured",
        **fields,
    }


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "tamper",
    [
        {"secret": "wrong-secret"},
        {"timestamp": int(time.time()) - 3600},
        {"signature": "sha256=00"},
    ],
)
def test_bad_signatures_and_stale_timestamps_are_rejected(client, channels, tamper):
    response = _post(client, _event(), **tamper)
    assert response.status_code == 400
    assert response.json()["code"] == "webhook_rejected"
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(databases=ALL)
def test_unknown_channels_and_missing_headers_are_rejected(client, channels):
    assert (
        client.post(
            "/api/v1/payments/webhooks/nope/", b"{}", content_type="application/json"
        ).status_code
        == 400
    )
    assert client.post(URL, b"{}", content_type="application/json").status_code == 400
    assert not WebhookEvent.objects.exists()


@pytest.mark.django_db(databases=ALL)
def test_a_replayed_event_is_recorded_once(client, channels):
    event = _event(payment_id="12345")
    first, again = _post(client, event), _post(client, event)
    assert first.status_code == again.status_code == 200
    assert first.json()["outcome"] == "ignored"  # no payment of ours with that id
    assert again.json()["outcome"] == "duplicate"
    assert WebhookEvent.objects.count() == 1


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_a_notification_settles_an_unknown_payment_by_asking_the_channel(
    client, acquirer, channels, shopper, order, settings
):
    # Given a card payment left unknown (the channel's answers timed out)
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    assert payment.status == "unknown"
    acquirer.set_faults("alpha")
    time.sleep(1.6)

    # A genuine notification makes the shop ask the channel, which settles it
    event = _event(payment.id, type="payment.authorized", status="authorized")
    assert _post(client, event).json()["outcome"] == "confirmed"
    assert _post(client, event).json()["outcome"] == "duplicate"
    assert Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id).status == "succeeded"
    assert Order.objects.using(shard_for_id(order.id)).get(id=order.id).status == "paid"
    assert TccTransaction.objects.get(payment_id=payment.id).status == "confirmed"
    assert_invariants_hold()


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_an_unverifiable_notification_is_not_trusted_but_makes_the_shop_ask(
    client, acquirer, channels, shopper, order, settings
):
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500)
    settings.BREAKER_CALL_TIMEOUT = 0.5
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    assert payment.status == "unknown"
    acquirer.set_faults("alpha", decline_rate=0.0)
    time.sleep(1.6)  # the stalled authorization lands at the bank

    # A forged "captured" claim is rejected and not recorded...
    response = _post(client, _event(payment.id), secret="forged")
    assert response.status_code == 400
    assert not WebhookEvent.objects.exists()
    # ...but the shop asked the bank itself, and the bank's answer settled the payment
    assert Payment.objects.using(shard_for_id(payment.id)).get(id=payment.id).status == "succeeded"
    assert_invariants_hold()


@pytest.mark.needs_redis
@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_the_acquirer_delivers_signed_duplicated_webhooks_applied_once(
    live_server, channels, settings
):
    from apps.orders import services as orders
    from apps.payments.services.ledger import wallet_topup
    from tests.factories.catalog import product_with_skus
    from tests.factories.users import UserFactory
    from tests.payments.acquirer_process import SandboxAcquirer
    from tests.workers import wait_for

    hooks = SandboxAcquirer(
        webhook_url=f"{live_server.url}/api/v1/payments/webhooks",
        secret=settings.ACQUIRER_WEBHOOK_SECRET,
        faults={"alpha": {"duplicate_webhooks": True}},
    ).start()
    try:
        settings.ACQUIRER_URL = hooks.url
        buyer = UserFactory(username="hooked")
        wallet_topup(user_id=buyer.id, amount=1, currency="EUR", reference="h", actor="t")
        sku = product_with_skus(stock=3).skus.get()
        order = orders.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        payment = payment_pay(order_id=order.id, user_id=buyer.id, method="card")
        assert payment.status == "succeeded"
        # authorized + captured, each delivered twice, each recorded once
        wait_for(
            lambda: WebhookEvent.objects.filter(payment_id=str(payment.id)).count() >= 2, timeout=20
        )
        time.sleep(1)
    finally:
        hooks.close()
    events = WebhookEvent.objects.filter(payment_id=str(payment.id))
    assert sorted(events.values_list("event_type", flat=True)) == [
        "payment.authorized",
        "payment.captured",
    ]
    assert_invariants_hold()


# --- No input makes a 500 (docs/input-limits.md) ------------------------------------------------

BIG = "1" * 5000


def _raw_post(client, body: bytes, *, timestamp: str, signature: str | None = None):
    signature = signature or webhook_signature(
        secret=channel_webhook_secret("alpha"), timestamp=timestamp, body=body
    )
    return client.post(
        URL,
        body,
        content_type="application/json",
        HTTP_X_ACQUIRER_TIMESTAMP=timestamp,
        HTTP_X_ACQUIRER_SIGNATURE=signature,
    )


@pytest.fixture
def settle_calls(monkeypatch):
    """Payments the webhook code asked the channel about (none must be, for junk ids)."""
    from apps.payments.services import webhooks

    calls: list[int] = []
    monkeypatch.setattr(
        webhooks, "payment_settle_now", lambda *, payment_id: calls.append(payment_id)
    )
    return calls


def _assert_rejected(response, settle_calls) -> None:
    assert response.status_code == 400, response.content[:200]
    body = response.json()
    assert body["code"] == "webhook_rejected" and body["detail"]
    assert not WebhookEvent.objects.exists()
    assert not TccTransaction.objects.exists()
    assert settle_calls == []


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "timestamp", ["1" * 400, BIG, "²", "１٣", "-5", " 17", "1.5", "0x10", "\x00", "é"]
)
def test_a_malformed_timestamp_is_rejected_whatever_the_signature(
    client, channels, settle_calls, timestamp
):
    # Given a notification signed over a timestamp that is not whole seconds in ASCII digits
    response = _raw_post(
        client, json.dumps(_event(payment_id="none")).encode(), timestamp=timestamp
    )
    # Then it is rejected like any unverifiable notification, and nothing is applied
    _assert_rejected(response, settle_calls)


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize("signature", ["sha256=é", "\x80\xff", "sha256=" + "0" * 5000, "\x00"])
def test_a_non_ascii_or_odd_signature_is_rejected(client, channels, settle_calls, signature):
    now = str(int(time.time()))
    response = _raw_post(
        client, json.dumps(_event(payment_id="none")).encode(), timestamp=now, signature=signature
    )
    _assert_rejected(response, settle_calls)


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"payment_id": "²"}).encode(),
        json.dumps({"payment_id": BIG}).encode(),
        json.dumps({"payment_id": "1" * 400}).encode(),
        json.dumps({"payment_id": str(2**64)}).encode(),
        json.dumps({"payment_id": [1]}).encode(),
        ("[" * 1000 + "]" * 1000).encode(),
        ('{"payment_id": ' + "[" * 1000 + "]" * 1000 + "}").encode(),
        b"\xff\xfe\x00",
        b"NaN",
    ],
)
def test_an_unverified_body_naming_no_payment_of_ours_is_rejected_and_nothing_asked(
    client, channels, settle_calls, body
):
    # Given a forged notification (bad signature) whose body is junk
    now = str(int(time.time()))
    response = _raw_post(client, body, timestamp=now, signature="sha256=forged")
    # Then it is rejected, nothing recorded, and the channel is not asked about anything
    _assert_rejected(response, settle_calls)


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize(
    "body",
    [
        ("[" * 1000 + "]" * 1000).encode(),
        ('{"event_id": "e1", "x": ' + "[" * 1000 + "]" * 1000 + "}").encode(),
        b'{"event_id": "e1", "amount": NaN}',
        b'{"event_id": "e1", "amount": 1e999}',
        b'{"event_id": "e1\\u0000", "payment_id": "none"}',
        b'{"event_id": "e1", "type": "\\u0000"}',
        b"\xff\xfe{\x00}\x00",
    ],
)
def test_a_signed_body_that_is_not_a_storable_event_is_rejected(
    client, channels, settle_calls, body
):
    # Given a correctly signed, fresh notification whose body cannot be an event
    response = _raw_post(client, body, timestamp=str(int(time.time())))
    # Then it is rejected and nothing is recorded
    _assert_rejected(response, settle_calls)


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize("payment_id", ["²", BIG, "1" * 400, str(2**64), "0", "-1", " 12", "１"])
def test_a_signed_event_naming_no_payment_of_ours_is_recorded_and_ignored(
    client, channels, settle_calls, payment_id
):
    # Given an authentic event whose payment id is not one of ours (not even a number)
    response = _post(client, _event(payment_id=payment_id))
    # Then it is acknowledged (the bank must not retry it forever) and not applied
    assert response.status_code == 200
    assert response.json() == {"received": True, "outcome": "ignored"}
    assert WebhookEvent.objects.count() == 1
    assert settle_calls == []


@pytest.mark.django_db(databases=ALL)
def test_a_body_over_the_bound_is_413_and_nothing_is_read(client, channels, settle_calls):
    body = json.dumps(_event(padding="x" * 70_000)).encode()
    response = _raw_post(client, body, timestamp=str(int(time.time())))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not WebhookEvent.objects.exists()
    assert settle_calls == []
