"""A buyer cancels a paid order before its fulfilment starts: the order is cancelled and
refunded in full in one shard transaction, the money goes back the way it came, the units go
back on sale; a cancel racing the processing task ends in exactly one of the two."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.db import connections

from apps.inventory.models import Reservation, Stock
from apps.orders import services as orders
from apps.orders.exceptions import InvalidOrderState
from apps.orders.models import FulfilmentStep, LoyaltyEntry, Order, OrderEvent
from apps.payments.models import Account, Payment, Refund, Transfer
from apps.payments.services import order_cancel_by_buyer, payment_pay, refunds_retry
from apps.payments.services.ledger import wallet_topup
from shop.sharding import shard_for_id
from tests.factories.catalog import product_with_skus
from tests.factories.users import UserFactory
from tests.orders.conftest import api_client, assert_invariants_hold, new_key
from tests.payments.conftest import written_counts
from tests.workers import wait_for

ALL = "__all__"


def _order(order_id) -> Order:
    return Order.objects.using(shard_for_id(order_id)).get(id=order_id)


def _refunds(order_id) -> list[Refund]:
    return list(Refund.objects.using(shard_for_id(order_id)).filter(payment__order_id=order_id))


def _stock(order) -> tuple[int, int, int]:
    line = order.lines.get()
    stock = Stock.objects.get(sku_id=line.sku_id)
    return stock.available, stock.reserved, stock.sold


def _wallet(user) -> int:
    return Account.objects.get(key=f"wallet:{user.id}:EUR").available


def _cancel(client, order_id, key=None):
    return client.post(f"/api/v1/orders/{order_id}/cancel/", HTTP_IDEMPOTENCY_KEY=key or new_key())


@pytest.mark.django_db(databases=ALL)
def test_cancelling_a_paid_wallet_order_refunds_it_and_puts_the_stock_back(
    processing_held, shopper, order
):
    # Given a paid wallet order (2 × €15.00 of 10 units) not yet in fulfilment
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert _order(order.id).status == "paid"
    assert _wallet(shopper) == 7_000 and _stock(order) == (8, 0, 2)
    client = api_client(shopper)

    # When the buyer cancels it
    response = _cancel(client, order.id, key="cancel-1")

    # Then the order is cancelled (and stays so), the money is back in the wallet, the units
    # are back on sale, and the refund names the buyer and why
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["payments"][0]["refunded_amount"] == 3000
    assert _order(order.id).status == "cancelled"
    assert _wallet(shopper) == 10_000
    assert _stock(order) == (10, 0, 0)
    assert set(Reservation.objects.filter(order_id=order.id).values_list("status", flat=True)) == {
        "released"
    }
    (refund,) = _refunds(order.id)
    assert (refund.status, refund.amount) == ("succeeded", 3000)
    assert refund.actor == f"buyer:{shopper.id}"
    assert refund.reason == "cancelled by the buyer before fulfilment"
    transfer = Transfer.objects.get(kind="refund")
    assert (transfer.memo, transfer.actor) == (refund.reason, f"buyer:{shopper.id}")
    events = OrderEvent.objects.using(shard_for_id(order.id)).filter(order_id=order.id)
    cancel = events.get(to_status="cancelled", from_status="paid")
    assert (cancel.actor, cancel.reason) == (f"user:{shopper.id}", refund.reason)
    assert events.filter(kind="refunded", to_status="cancelled").exists()  # noted, no move
    assert not events.filter(to_status__in=["refunded", "partially_refunded"]).exists()

    # A repeat with the same key replays; a new cancel is refused; nothing moves again
    replay = _cancel(client, order.id, key="cancel-1")
    assert replay.status_code == 200 and replay.json() == body
    assert replay.headers["Idempotent-Replayed"] == "true"
    again = _cancel(client, order.id)
    assert again.status_code == 409 and again.json()["code"] == "invalid_state"
    assert len(_refunds(order.id)) == 1 and _wallet(shopper) == 10_000
    assert_invariants_hold()


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_cancelling_a_paid_card_order_refunds_it_through_the_channel(
    acquirer, channels, processing_held, shopper, order
):
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    assert payment.status == "succeeded" and _order(order.id).status == "paid"

    response = _cancel(api_client(shopper), order.id)

    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    (refund,) = _refunds(order.id)
    assert refund.status == "succeeded"
    assert acquirer.payment(payment.channel, str(payment.id))["refunded_amount"] == 3000
    assert _stock(order) == (10, 0, 0)
    assert_invariants_hold()


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_a_cancel_during_a_channel_outage_leaves_the_refund_pending_until_the_retry(
    acquirer, channels, processing_held, shopper, order
):
    # Given a paid card order, and its channel down
    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    acquirer.set_faults(payment.channel, outage=True)

    # When the buyer cancels it
    response = _cancel(api_client(shopper), order.id)

    # Then the order is cancelled with its refund recorded, waiting for the channel; the
    # audit accepts that (the refund owed is on record and retried)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    (refund,) = _refunds(order.id)
    assert (refund.status, refund.amount) == ("pending", 3000)
    assert _stock(order) == (10, 0, 0)
    assert_invariants_hold()

    # And when the channel is back, the retry job finishes it; the order stays cancelled
    acquirer.set_faults(payment.channel)
    assert refunds_retry(older_than_seconds=0) == 1
    assert _refunds(order.id)[0].status == "succeeded"
    assert acquirer.payment(payment.channel, str(payment.id))["refunded_amount"] == 3000
    stored = Payment.objects.using(shard_for_id(order.id)).get(id=payment.id)
    assert stored.refunded_amount == 3000
    assert _order(order.id).status == "cancelled"
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_refund_that_cannot_be_booked_yet_does_not_undo_the_cancel(
    processing_held, monkeypatch, shopper, order
):
    # Given a paid wallet order, and the ledger's database away when the refund is booked
    from django.db import OperationalError

    from apps.payments.services import ledger

    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")

    def away(**kwargs):
        raise OperationalError("default is away")

    # When the buyer cancels: the cancel and the refund it owes stand
    with monkeypatch.context() as patched:
        patched.setattr(ledger, "refund_post", away)
        response = _cancel(api_client(shopper), order.id)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    (refund,) = _refunds(order.id)
    assert refund.status == "pending" and _wallet(shopper) == 7_000
    assert_invariants_hold()

    # And the retry job pays it once the database is back
    assert refunds_retry(older_than_seconds=0) == 1
    assert _wallet(shopper) == 10_000 and _order(order.id).status == "cancelled"
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_processing_order_cannot_be_cancelled(processing_held, shopper, order):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    assert orders.order_fulfilment_run(order_id=order.id)
    before, wallet = written_counts(), _wallet(shopper)

    response = _cancel(api_client(shopper), order.id)

    assert response.status_code == 409
    assert response.json()["code"] == "invalid_state"
    assert "request a refund" in response.json()["detail"]
    assert _order(order.id).status == "processing"
    assert not _refunds(order.id) and _wallet(shopper) == wallet
    # Only the refusal is remembered for its key (a repeat gets the same answer).
    after = written_counts()
    assert after.pop("IdempotencyRecord") == before.pop("IdempotencyRecord") + 1
    assert after == before


@pytest.mark.django_db(databases=ALL)
def test_others_paid_orders_cannot_be_cancelled(processing_held, shopper, order):
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    stranger = UserFactory(username="stranger")
    response = _cancel(api_client(stranger), order.id)
    assert response.status_code == 404
    assert _order(order.id).status == "paid" and not _refunds(order.id)


@pytest.mark.django_db(databases=ALL)
def test_the_unpaid_cancel_refuses_a_paid_order(processing_held, shopper, order):
    # Only the payments app's cancel refunds: the orders service (used by the admin's "cancel
    # unpaid orders") must never cancel a paid order without its refund.
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    before = written_counts()
    with pytest.raises(InvalidOrderState):
        orders.order_cancel(order_id=order.id, actor="operator:1", reason="by an operator")
    assert _order(order.id).status == "paid"
    assert written_counts() == before and _stock(order) == (8, 0, 2)


@pytest.mark.django_db(databases=ALL)
def test_an_unpaid_order_is_cancelled_as_before(shopper, order):
    response = _cancel(api_client(shopper), order.id)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert _stock(order) == (10, 0, 0)
    assert not _refunds(order.id)
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_cancel_undoes_fulfilment_steps_already_done_and_stops_the_rest(
    processing_held, shopper, order
):
    # Given a paid order whose processing had allocated it and credited points, not more
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    fresh = _order(order.id)
    orders._allocate(fresh)
    orders._credit_points(fresh)
    alias = shard_for_id(order.id)
    assert LoyaltyEntry.objects.using(alias).filter(order_id=order.id).exists()

    # When the buyer cancels it, and the processing task then carries on
    order_cancel_by_buyer(order_id=order.id, user_id=shopper.id)
    assert orders.order_fulfilment_run(order_id=order.id) is False

    # Then no trace of fulfilment is left to act on, and no further step was recorded
    assert not LoyaltyEntry.objects.using(alias).filter(order_id=order.id).exists()
    assert all(line.allocated_at is None for line in _order(order.id).lines.all())
    steps = set(
        FulfilmentStep.objects.using(alias).filter(order_id=order.id).values_list("step", flat=True)
    )
    assert steps == {"allocation", "loyalty_points"}
    assert _order(order.id).status == "cancelled" and _stock(order) == (10, 0, 0)
    assert _wallet(shopper) == 10_000
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_a_cancel_whose_stock_return_failed_is_finished_by_its_queued_task(
    processing_held, monkeypatch, shopper, order
):
    # Given the stock return right after the cancel's commit fails (default DB hiccup)
    from django.db import OperationalError

    from apps.orders import tasks
    from shop.models import OutboxMessage

    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")

    def unavailable(**kwargs):
        raise OperationalError("default is away")

    with monkeypatch.context() as patched:
        patched.setattr(orders, "stock_return", unavailable)
        order_cancel_by_buyer(order_id=order.id, user_id=shopper.id)
    assert _stock(order) == (8, 0, 2)  # not yet back

    # When the task the cancel queued through the outbox runs
    message = OutboxMessage.objects.using(shard_for_id(order.id)).get(
        task="apps.orders.tasks.order_stock_return"
    )
    assert tasks.order_stock_return.run(**message.kwargs, message_id="m1") == 2

    # Then the units are back on sale (and a second delivery changes nothing)
    assert _stock(order) == (10, 0, 0)
    assert tasks.order_stock_return.run(**message.kwargs, message_id="m1") == 0
    assert_invariants_hold()


@pytest.mark.django_db(databases=ALL)
def test_the_audit_flags_a_cancelled_paid_order_that_was_not_refunded(
    processing_held, shopper, order
):
    # Given a paid order cancelled behind the services' back (no refund)
    payment_pay(order_id=order.id, user_id=shopper.id, method="wallet")
    from apps.inventory.services import stock_return

    Order.objects.using(shard_for_id(order.id)).filter(id=order.id).update(status="cancelled")
    stock_return(order_id=order.id)

    # Then the audit says so, and only that
    from io import StringIO

    out = StringIO()
    with pytest.raises(SystemExit):
        call_command("audit_invariants", stdout=out)
    violations = [line for line in out.getvalue().splitlines() if "VIOLATION" in line]
    assert len(violations) == 1, violations
    assert "order is cancelled and only 0 is refunded" in violations[0]


@pytest.mark.needs_redis
@pytest.mark.django_db(databases=ALL)
def test_a_refund_already_under_way_is_not_paid_twice_by_the_cancel(
    acquirer, channels, processing_held, shopper, order
):
    # Given an operator's partial refund of the paid card order, pending (channel down), so
    # the order is still `paid`
    from apps.payments.services import refund_create

    payment = payment_pay(order_id=order.id, user_id=shopper.id, method="card")
    acquirer.set_faults(payment.channel, outage=True)
    first = refund_create(order_id=order.id, amount=1000, actor="operator:1", reason="broken")
    assert first.status == "pending" and _order(order.id).status == "paid"

    # When the buyer cancels it
    assert _cancel(api_client(shopper), order.id).status_code == 200

    # Then the cancel refunds only what is left, and once the channel is back the buyer has
    # exactly what they paid, no more
    amounts = sorted(refund.amount for refund in _refunds(order.id))
    assert amounts == [1000, 2000]
    acquirer.set_faults(payment.channel)

    def settled() -> bool:  # the channel's breaker opened meanwhile: it lets probes through
        refunds_retry(older_than_seconds=0)
        return all(refund.status == "succeeded" for refund in _refunds(order.id))

    wait_for(settled, timeout=30)
    assert acquirer.payment(payment.channel, str(payment.id))["refunded_amount"] == 3000
    assert _order(order.id).status == "cancelled"
    assert_invariants_hold()


# --- A cancel racing the processing task ---------------------------------------------------------

RACES = 8


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_cancel_racing_the_processing_task_ends_in_exactly_one_outcome(processing_held):
    # Given paid wallet orders of several buyers, none processed yet
    sku = product_with_skus(stock=RACES).skus.get()
    paid = []
    for i in range(RACES):
        buyer = UserFactory(username=f"racer{i}")
        wallet_topup(user_id=buyer.id, amount=5_000, currency="EUR", reference=f"t{i}",
                     actor="test")  # fmt: skip
        order = orders.order_place(user_id=buyer.id, items=[{"sku": sku.code, "quantity": 1}])
        payment_pay(order_id=order.id, user_id=buyer.id, method="wallet")
        assert _order(order.id).status == "paid"
        paid.append((buyer, order))

    # When, for each, the buyer's cancel and the processing task start at the same moment
    outcomes: dict[int, dict[str, object]] = {order.id: {} for _, order in paid}

    def cancel(buyer, order, gate):
        gate.wait()
        try:
            order_cancel_by_buyer(order_id=order.id, user_id=buyer.id)
            outcomes[order.id]["cancel"] = "cancelled"
        except InvalidOrderState:
            outcomes[order.id]["cancel"] = "refused"
        finally:
            connections.close_all()

    def process(order, gate):
        gate.wait()
        try:
            outcomes[order.id]["process"] = orders.order_fulfilment_run(order_id=order.id)
        finally:
            connections.close_all()

    threads = []
    for buyer, order in paid:
        gate = threading.Barrier(2)
        threads += [
            threading.Thread(target=cancel, args=(buyer, order, gate)),
            threading.Thread(target=process, args=(order, gate)),
        ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    # Then each order ended exactly one way: cancelled and refunded with nothing of its
    # fulfilment left, or processing with its payment untouched
    for buyer, order in paid:
        seen = outcomes[order.id]
        status = _order(order.id).status
        refunds = _refunds(order.id)
        alias = shard_for_id(order.id)
        if status == "cancelled":
            assert seen == {"cancel": "cancelled", "process": False}
            assert [(r.status, r.amount) for r in refunds] == [("succeeded", 1000)]
            assert _wallet(buyer) == 5_000
            assert not LoyaltyEntry.objects.using(alias).filter(order_id=order.id).exists()
        else:
            assert status == "processing"
            assert seen == {"cancel": "refused", "process": True}
            assert not refunds and _wallet(buyer) == 4_000
    stock = Stock.objects.get(sku=sku)
    cancelled = sum(_order(order.id).status == "cancelled" for _, order in paid)
    assert (stock.available, stock.reserved, stock.sold) == (cancelled, 0, RACES - cancelled)
    assert_invariants_hold()
