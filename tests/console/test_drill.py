"""`manage.py drill`: a game-day drill injects, observes, restores, cleans up and audits."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from apps.catalog.models import Category, Product, Sku
from apps.inventory.models import Reservation, Stock
from apps.orders.models import Order
from apps.payments.services.channels import breaker_for
from shop.models import Switch
from shop.runtime import runtime_refresh, switch_on
from shop.sharding import order_shard_aliases
from tests.orders.conftest import assert_invariants_hold
from tests.payments.conftest import acquirer, channels, sandbox  # noqa: F401 (fixtures)

ALL = "__all__"
STAGING = "--i-know-this-is-staging"
pytestmark = pytest.mark.django_db(databases=ALL)


def drill(*args: str) -> tuple[int, dict]:
    """Run the drill in-process with --json: (exit code, report)."""
    out = io.StringIO()
    code = 0
    try:
        call_command("drill", *args, STAGING, "--json", stdout=out, stderr=io.StringIO())
    except SystemExit as exc:
        code = exc.code
    return code, json.loads(out.getvalue())


def scenario(report: dict, name: str) -> dict:
    (found,) = [s for s in report["scenarios"] if s["scenario"] == name]
    return found


def orders_count() -> int:
    return sum(Order.objects.using(alias).count() for alias in order_shard_aliases())


def counts() -> dict[str, int]:
    return {
        "users": get_user_model().objects.count(),
        "categories": Category.objects.count(),
        "products": Product.objects.count(),
        "skus": Sku.objects.count(),
        "stock": Stock.objects.count(),
        "reservations": Reservation.objects.count(),
        "switches": Switch.objects.count(),
        "orders": orders_count(),
    }


def drill_catalog() -> list[str]:
    return list(Product.objects.filter(name__startswith="DRILL-").values_list("name", flat=True))


def test_the_drill_refuses_without_debug_or_the_staging_flag(settings):
    # Given a stack whose DEBUG is off (it may be production)
    settings.DEBUG = False
    before = counts()
    err = io.StringIO()

    # When an operator runs a drill without the staging flag
    with pytest.raises(SystemExit) as exit_:
        call_command("drill", "read-only", stdout=io.StringIO(), stderr=err)

    # Then it refuses with exit code 2, says why, and changed nothing
    assert exit_.value.code == 2
    assert STAGING in err.getvalue()
    assert counts() == before
    assert switch_on("read_only") is False


def test_read_only_refuses_a_checkout_with_503_then_restores_the_switch(settings):
    settings.DEBUG = False
    before = counts()

    code, report = drill("read-only")

    # The checkout was refused through the real HTTP stack and wrote nothing
    observed = scenario(report, "read-only")["observed"]
    assert (code, report["ok"]) == (0, True)
    assert observed["status"] == 503 and observed["code"] == "service_unavailable"
    assert observed["orders_written"] == 0
    # The switch is back off, the catalog holds no trace, the buyer is deactivated
    runtime_refresh()
    assert switch_on("read_only") is False
    assert drill_catalog() == []
    after = counts()
    assert {k: after[k] - before[k] for k in after} == {
        "users": 1,  # the drill's buyer, deactivated
        "categories": 0,
        "products": 0,
        "skus": 0,
        "stock": 0,
        "reservations": 0,
        "switches": 0,
        "orders": 0,
    }
    assert not get_user_model().objects.filter(username__startswith="drill-", is_active=True)
    assert report["audit"]["ok"] is True
    assert_invariants_hold()


def test_read_only_restores_the_switch_even_when_the_observation_fails(monkeypatch):
    # Given a checkout request that blows up half-way through the observation
    def broken_post(*args, **kwargs):
        raise RuntimeError("the network cable was pulled")

    monkeypatch.setattr("apps.console.drills.Client.post", broken_post)

    # When the drill runs, it fails loudly
    with pytest.raises(RuntimeError):
        call_command("drill", "read-only", STAGING, stdout=io.StringIO())

    # But the switch is off again and the drill's test product is gone
    runtime_refresh()
    assert switch_on("read_only") is False
    assert Switch.objects.get(name="read_only").on is False
    assert drill_catalog() == []
    assert_invariants_hold()


def test_the_breaker_is_closed_again_even_when_paying_fails(channels, monkeypatch):  # noqa: F811
    # Given paying blows up while the drill holds the breaker open
    def broken_pay(**kwargs):
        assert breaker_for("alpha").state() == "open"
        raise RuntimeError("worker killed")

    monkeypatch.setattr("apps.console.drills.payment_pay", broken_pay)

    with pytest.raises(RuntimeError):
        call_command("drill", "breaker", "--channel", "alpha", STAGING, stdout=io.StringIO())

    # Then the breaker is closed again, and the unpaid test order is gone with its product
    assert breaker_for("alpha").snapshot()["forced"] is False
    assert breaker_for("alpha").state() == "closed"
    assert drill_catalog() == []
    assert orders_count() == 0
    assert_invariants_hold()


def _flood_leaves_exactly_the_units_sold_and_no_trace(threads: str) -> None:
    # Given nothing but the drill: 24 checkouts for 6 units
    before = counts()

    code, report = drill("checkout-flood", "--orders", "24", "--units", "6", "--threads", threads)

    # Then exactly 6 orders were made, the 18 others refused out of stock, none oversold
    observed = scenario(report, "checkout-flood")["observed"]
    assert (code, report["ok"]) == (0, True), report
    assert observed["outcomes"] == {"ordered": 6, "out_of_stock": 18}
    assert observed["stock"] == {"available": 0, "reserved": 6, "sold": 0}
    # And afterwards: no product, SKU, stock, reservation or order of the drill remains
    assert drill_catalog() == []
    after = counts()
    unchanged = [name for name in after if name != "users"]
    assert {k: after[k] - before[k] for k in unchanged} == dict.fromkeys(unchanged, 0)
    assert report["cleanup"]["counts"]["orders_removed"] == 6
    assert report["audit"]["ok"] is True
    assert_invariants_hold()


@pytest.mark.needs_postgres
@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_concurrent_checkout_flood_sells_exactly_the_units_and_leaves_no_trace():
    _flood_leaves_exactly_the_units_sold_and_no_trace(threads="8")


@pytest.mark.django_db(databases=ALL, transaction=True)
def test_a_checkout_flood_from_one_thread_also_cleans_up_after_itself():
    # The embedded profile's SQLite takes one writer at a time: the same drill, one thread
    _flood_leaves_exactly_the_units_sold_and_no_trace(threads="1")


def _faults(acquirer, code: str) -> dict:  # noqa: F811
    return acquirer.call("GET", f"/channels/{code}")[1]["faults"]


def test_bank_outage_fails_over_and_restores_the_channel(acquirer, channels, settings):  # noqa: F811
    settings.BREAKER_FAILURE_THRESHOLD = 2
    settings.BREAKER_RESET_TIMEOUT = 600  # it stays open until the drill restores it
    healthy = _faults(acquirer, "alpha")

    code, report = drill("bank-outage", "--orders", "3", "--channel", "alpha")

    # Every payment failed over from alpha (down) to another channel
    observed = scenario(report, "bank-outage")["observed"]
    assert (code, report["ok"]) == (0, True), report
    assert observed["by_status"] == {"succeeded": 3}
    assert "alpha" not in observed["by_channel"]
    assert observed["breaker_of_down_channel"] == "open"
    # Alpha is healthy again at the bank and in the shop
    assert _faults(acquirer, "alpha") == healthy
    assert breaker_for("alpha").state() == "closed"
    # The paid orders stay, refunded; their SKU is retired, invisible in the shop
    assert report["cleanup"]["counts"]["orders_refunded_succeeded"] == 3
    assert not Product.objects.filter(name__startswith="DRILL-", is_active=True).exists()
    assert not Sku.objects.filter(code__startswith="DRILL-", is_active=True).exists()
    assert_invariants_hold()


def test_lost_answers_are_settled_by_status_queries_without_a_second_charge(
    acquirer,  # noqa: F811
    channels,  # noqa: F811
):
    code, report = drill("lost-answers", "--orders", "2", "--channel", "alpha")

    observed = scenario(report, "lost-answers")["observed"]
    assert (code, report["ok"]) == (0, True), report
    assert observed["final_by_status"] == {"succeeded": 2}
    assert observed["attempt_outcomes"]["timeout"] == 2  # each answer was lost once
    assert observed["attempt_outcomes"]["queried:authorized"] == 2
    assert _faults(acquirer, "alpha")["lose_response_rate"] == 0.0
    assert report["cleanup"]["counts"]["orders_refunded_succeeded"] == 2
    assert_invariants_hold()


def test_a_payment_left_unknown_by_an_opened_breaker_is_settled_after_the_restore(
    acquirer,  # noqa: F811
    channels,  # noqa: F811
    settings,
):
    # Given a breaker that opens at the first lost answer (and stays open while injected)
    settings.BREAKER_FAILURE_THRESHOLD = 1
    settings.BREAKER_RESET_TIMEOUT = 600

    code, report = drill("lost-answers", "--orders", "2", "--channel", "alpha")

    # The first payment's status query met the open breaker: unknown, settled after the
    # restore; the second never reached the bank. One capture, nothing unknown left.
    observed = scenario(report, "lost-answers")["observed"]
    assert (code, report["ok"]) == (0, True), report
    assert observed["breaker_while_injected"] == "open"
    assert observed["first_answers"]["by_status"] == {"unknown": 1, "failed": 1}
    assert (observed["settled_later"], observed["reached_the_bank"]) == (1, 1)
    assert observed["final_by_status"] == {"succeeded": 1, "failed": 1}
    assert breaker_for("alpha").state() == "closed"
    assert_invariants_hold()


def test_a_forced_open_breaker_is_avoided_then_closed_again(acquirer, channels):  # noqa: F811
    code, report = drill("breaker", "--orders", "2", "--channel", "alpha")

    observed = scenario(report, "breaker")["observed"]
    assert (code, report["ok"]) == (0, True), report
    assert "alpha" not in observed["routing_order"]
    assert observed["by_status"] == {"succeeded": 2}
    assert "alpha" not in observed["by_channel"]
    assert breaker_for("alpha").state() == "closed"
    assert breaker_for("alpha").snapshot()["forced"] is False
    assert_invariants_hold()
