"""Idempotency keys on checkout: one effect per key, replays, mismatches, in-flight conflicts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.utils import timezone

from apps.inventory.models import Stock
from apps.orders.models import Order
from shop.idempotency import (
    IdempotencyClaim,
    IdempotencyConflict,
    idempotency_begin,
    idempotency_cleanup,
)
from shop.models import IdempotencyRecord
from shop.sharding import order_shard_aliases, shard_for_user
from tests.orders.conftest import api_client, assert_invariants_hold, post_order

ALL = "__all__"


def _orders() -> int:
    return sum(Order.objects.using(alias).count() for alias in order_shard_aliases())


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_fifty_concurrent_identical_posts_make_one_order(buyer, sku):
    client_per_thread = [api_client(buyer) for _ in range(50)]
    items = [{"sku": sku.code, "quantity": 2}]

    def attempt(client):
        try:
            response = post_order(client, items, key="same-key")
            return response.status_code, response.json(), response.get("Idempotent-Replayed")
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes = list(pool.map(attempt, client_per_thread))

    created = [body for status, body, replayed in outcomes if status == 201 and not replayed]
    replays = [body for status, body, replayed in outcomes if status == 201 and replayed]
    conflicts = [body for status, body, _ in outcomes if status == 409]
    assert len(created) == 1
    assert len(created) + len(replays) + len(conflicts) == 50
    assert all(body == created[0] for body in replays)
    assert all(body["code"] == "idempotency_conflict" for body in conflicts)
    assert _orders() == 1
    assert Stock.objects.get(sku=sku).reserved == 2
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_replay_returns_the_first_response(buyer, sku, django_capture_on_commit_callbacks):
    client = api_client(buyer)
    items = [{"sku": sku.code, "quantity": 1}]
    first = post_order(client, items, key="k1")
    again = post_order(client, items, key="k1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert _orders() == 1


@pytest.mark.django_db(databases=ALL)
def test_the_same_key_with_another_body_is_422(buyer, sku):
    client = api_client(buyer)
    assert post_order(client, [{"sku": sku.code, "quantity": 1}], key="k2").status_code == 201
    other = post_order(client, [{"sku": sku.code, "quantity": 2}], key="k2")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_mismatch"
    assert _orders() == 1


@pytest.mark.django_db(databases=ALL)
def test_keys_belong_to_one_buyer(buyer, sku):
    from tests.factories.users import UserFactory

    items = [{"sku": sku.code, "quantity": 1}]
    assert post_order(api_client(buyer), items, key="shared").status_code == 201
    assert (
        post_order(api_client(UserFactory(username="b2")), items, key="shared").status_code == 201
    )
    assert _orders() == 2


@pytest.mark.django_db(databases=ALL)
def test_a_refusal_is_remembered_for_its_key(buyer, sku):
    client = api_client(buyer)
    too_many = [{"sku": sku.code, "quantity": 10}]
    assert post_order(client, too_many, key="k3").status_code == 201
    refused = post_order(client, [{"sku": sku.code, "quantity": 1}], key="k4")
    assert refused.status_code == 409 and refused.json()["code"] == "out_of_stock"
    Stock.objects.filter(sku=sku).update(received=11, available=1)  # restocked
    again = post_order(client, [{"sku": sku.code, "quantity": 1}], key="k4")
    assert again.status_code == 409  # the first answer for k4, replayed
    assert again["Idempotent-Replayed"] == "true"


@pytest.mark.django_db(databases=ALL)
def test_validation_errors_are_not_remembered(buyer, sku):
    client = api_client(buyer)
    assert post_order(client, [{"sku": sku.code, "quantity": 0}], key="k5").status_code == 400
    assert post_order(client, [{"sku": sku.code, "quantity": 1}], key="k5").status_code == 201


@pytest.mark.django_db(databases=ALL)
@pytest.mark.parametrize("key", [None, "", "x" * 256, "tab\there", "é"])
def test_a_missing_or_malformed_key_is_400(buyer, sku, key):
    client = api_client(buyer)
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    response = client.post(
        "/api/v1/orders/", {"items": [{"sku": sku.code, "quantity": 1}]}, format="json", **headers
    )
    assert response.status_code == 400
    expected = "idempotency_key_required" if not key else "validation_error"
    assert response.json()["code"] == expected
    assert _orders() == 0


@pytest.mark.django_db(databases=ALL)
def test_a_key_in_flight_is_409_with_retry_after(buyer, sku):
    alias = shard_for_user(buyer.id)
    idempotency_begin(using=alias, user_id=buyer.id, key="busy", fingerprint="f")
    IdempotencyRecord.objects.using(alias).update(fingerprint=_fingerprint_of(buyer, sku))
    response = post_order(api_client(buyer), [{"sku": sku.code, "quantity": 1}], key="busy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"
    assert int(response["Retry-After"]) >= 1


def _fingerprint_of(buyer, sku) -> str:
    from shop.idempotency import request_fingerprint

    return request_fingerprint(
        method="POST", path="/api/v1/orders/", body={"items": [{"sku": sku.code, "quantity": 1}]}
    )


@pytest.mark.django_db(databases=ALL)
def test_an_expired_claim_cannot_be_released_or_completed_by_its_former_owner(buyer):
    alias = shard_for_user(buyer.id)
    former = idempotency_begin(using=alias, user_id=buyer.id, key="slow", fingerprint="f")
    assert isinstance(former, IdempotencyClaim)
    # Its lock runs out (the owner stalled); a retry takes the key over
    IdempotencyRecord.objects.using(alias).update(
        locked_until=timezone.now() - timedelta(seconds=1)
    )
    current = idempotency_begin(using=alias, user_id=buyer.id, key="slow", fingerprint="f")
    assert isinstance(current, IdempotencyClaim) and current.token != former.token

    assert former.release() is False
    with pytest.raises(IdempotencyConflict), transaction.atomic(using=alias):
        former.complete(status=201, body={"late": True})
    record = IdempotencyRecord.objects.using(alias).get()
    assert record.owner_token == current.token
    assert record.status == "in_flight"
    with transaction.atomic(using=alias):
        current.complete(status=201, body={"ok": True})
    assert IdempotencyRecord.objects.using(alias).get().response_body == {"ok": True}


@pytest.mark.django_db(databases=ALL)
def test_records_are_cleaned_after_their_ttl(buyer, settings):
    alias = shard_for_user(buyer.id)
    idempotency_begin(using=alias, user_id=buyer.id, key="old", fingerprint="f")
    idempotency_begin(using=alias, user_id=buyer.id, key="new", fingerprint="f")
    IdempotencyRecord.objects.using(alias).filter(key="old").update(
        created_at=timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_RECORD_TTL + 1)
    )
    assert idempotency_cleanup() == 1
    assert list(IdempotencyRecord.objects.using(alias).values_list("key", flat=True)) == ["new"]


@pytest.mark.django_db(databases=ALL)
def test_an_order_whose_key_was_taken_over_is_not_written(buyer, sku):
    """The key's completion travels in the order's own statement (shop.rowwrites): when it
    finds the key taken over, the order, its lines, event and outbox row roll back with it."""
    from apps.orders import services
    from shop.models import OutboxMessage

    alias = shard_for_user(buyer.id)
    former = idempotency_begin(using=alias, user_id=buyer.id, key="stalled", fingerprint="f")
    IdempotencyRecord.objects.using(alias).update(
        locked_until=timezone.now() - timedelta(seconds=1)
    )
    assert isinstance(
        idempotency_begin(using=alias, user_id=buyer.id, key="stalled", fingerprint="f"),
        IdempotencyClaim,
    )

    # When the stalled owner's checkout writes its order with the key's completion
    with pytest.raises(IdempotencyConflict):
        services.order_place(
            user_id=buyer.id,
            items=[{"sku": sku.code, "quantity": 2}],
            also_write=lambda order: [former.completion(status=201, body={"id": str(order.id)})],
        )

    # Then nothing of the order stands and its units are available again
    assert _orders() == 0
    assert not OutboxMessage.objects.using(alias).exists()
    assert IdempotencyRecord.objects.using(alias).get().status == "in_flight"
    stock = Stock.objects.get(sku=sku)
    assert (stock.available, stock.reserved) == (10, 0)
    assert_invariants_hold()
