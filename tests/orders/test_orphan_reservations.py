"""Stock held by a checkout that died before writing its order is released
ORPHAN_RESERVATION_GRACE after the hold (not at the reservation's 15-minute expiry), and the
invariant audit and the expiry sweep share one definition of an orphan."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.inventory.models import Reservation, Stock
from apps.inventory.services import stock_reserve
from apps.orders import services
from apps.orders.audit import order_violations
from shop.sharding import logical_shard_for_user, shard_for_user
from shop.sharding.ids import id_generate
from tests.orders.conftest import assert_invariants_hold

ALL = "__all__"


def _stock(sku) -> tuple[int, int, int]:
    stock = Stock.objects.get(sku=sku)
    return stock.available, stock.reserved, stock.sold


def _orphan(buyer, sku, *, held_seconds_ago: float) -> int:
    """A checkout that reserved 2 units (holding them for the usual 15 minutes) and died
    ``held_seconds_ago`` before writing its order."""
    order_id = id_generate(alias=shard_for_user(buyer.id), logical=logical_shard_for_user(buyer.id))
    expires_at = timezone.now() + timedelta(minutes=15)
    stock_reserve(order_id=order_id, user_id=buyer.id, items=[(sku.id, 2)], expires_at=expires_at)
    Reservation.objects.filter(order_id=order_id).update(
        created_at=timezone.now() - timedelta(seconds=held_seconds_ago)
    )
    return order_id


@pytest.mark.django_db(databases=ALL)
def test_an_orphan_is_released_after_the_grace_not_at_its_expiry(buyer, sku, settings):
    # Given an orphan held just past the grace (its reservation still 15 minutes from expiry)
    # and one still within the grace (its checkout may yet write the order)
    settings.ORPHAN_RESERVATION_GRACE = 60
    past_grace = _orphan(buyer, sku, held_seconds_ago=61)
    in_grace = _orphan(buyer, sku, held_seconds_ago=10)
    assert _stock(sku) == (6, 4, 0)

    # When the sweep runs
    result = services.orders_expire_sweep()

    # Then the orphan past the grace is released, the other is left alone
    assert result.released_orphans == 1
    assert set(
        Reservation.objects.filter(order_id=past_grace).values_list("status", flat=True)
    ) == {"released"}
    assert set(Reservation.objects.filter(order_id=in_grace).values_list("status", flat=True)) == {
        "held"
    }
    assert _stock(sku) == (8, 2, 0)
    assert list(order_violations()) == []


@pytest.mark.django_db(databases=ALL)
def test_the_audit_reports_only_orphans_the_sweep_has_had_a_run_to_release(buyer, sku, settings):
    # Given an orphan just past the grace: the sweep's business, not yet a violation
    settings.ORPHAN_RESERVATION_GRACE = 60
    settings.ORDER_EXPIRY_SWEEP_SECONDS = 60
    recent = _orphan(buyer, sku, held_seconds_ago=90)
    assert list(order_violations()) == []
    call_command("audit_invariants")  # exits 1 on a violation

    # When an orphan is older than the grace and a whole sweep interval (the sweep is behind)
    stale = _orphan(buyer, sku, held_seconds_ago=125)

    # Then the audit names it, and only it
    assert list(order_violations()) == [f"reservation held for order {stale}, which does not exist"]
    # and once the sweep has run, both are released and the audit is clean
    assert services.orders_expire_sweep().released_orphans == 2
    assert not Reservation.objects.filter(order_id__in=[recent, stale], status="held").exists()
    assert _stock(sku) == (10, 0, 0)
    assert_invariants_hold()
