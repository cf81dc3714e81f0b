"""Fault experiments against a whole running shop (``make chaos``; docs/chaos.md).

Each scenario starts its own stack (tests.chaos.harness): gunicorn, Celery worker and beat and
the sandbox acquirer from the Procfile, on their own databases, Redis and RabbitMQ node; breaks
one thing; checks what buyers saw; lets it come back; checks everything resumed; and ends with
exact counts and ``manage.py audit_invariants`` (exit 0). Volumes are small: tens of orders.
Latencies are printed, never asserted.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import threading
import uuid
from collections import Counter
from http.client import HTTPException

import psycopg
import pytest

from tests.chaos.harness import (
    Answer,
    Blackhole,
    Buyer,
    ChaosStack,
    chaos_stack,
    eventually,
    http,
    in_parallel,
    latency_line,
)
from tests.workers import StallingSMTPServer

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    pytest.mark.needs_broker,
    pytest.mark.timeout(420),
]


# --- Helpers ---------------------------------------------------------------------------------


def place(buyer: Buyer, sku: str, *, key: str | None = None) -> tuple[Answer, str | None]:
    """Checkout one unit; the answer and the order id (following a queued ticket)."""
    answer = buyer.checkout(sku, key=key)
    if answer.status == 201:
        return answer, answer.body["id"]
    if answer.status == 202:
        poll = answer.body["poll"]
        path = poll if poll.startswith("/") else "/" + poll.split("/", 3)[-1]
        ticket = eventually(
            lambda: (t := buyer.call("GET", path)).body.get("status") != "queued" and t,
            timeout=60,
            what="the queued checkout decided",
        )
        return answer, ticket.body.get("order")
    return answer, None


def buy(buyer: Buyer, sku: str, method: str = "wallet", channel: str | None = None) -> list:
    """Checkout then pay: the answers (the payment's only if the checkout was accepted)."""
    answer, order_id = place(buyer, sku)
    answers = [answer]
    if order_id:
        answers.append(buyer.pay(int(order_id), method, channel=channel))
    return answers


def statuses(answers: list[Answer]) -> Counter:
    return Counter(a.status for a in answers)


def finish(stack: ChaosStack, report, *, extra: dict | None = None) -> dict:
    """Print exact counts, then run ``audit_invariants`` with the stack's env: exit 0."""
    counts = stack.counts() | (extra or {})
    for name, value in counts.items():
        report(f"{name}: {value}")
    audit = stack.audit()
    report("audit_invariants: " + (audit.stdout.strip().splitlines() or ["?"])[-1])
    assert audit.returncode == 0, audit.stdout + audit.stderr
    return counts


def processed_once(stack: ChaosStack) -> tuple[int, list[str]]:
    """(paid orders, those not processed exactly once: loyalty entry and the step to
    processing recorded once each)."""
    paid = {
        row[0]
        for row in stack.sql_shards(
            "SELECT id FROM orders_order WHERE paid_at IS NOT NULL AND status <> 'refunded'"
        )
    }
    loyalty = Counter(
        row[0] for row in stack.sql_shards("SELECT order_id FROM orders_loyaltyentry")
    )
    moves = Counter(
        row[0]
        for row in stack.sql_shards(
            "SELECT order_id FROM orders_orderevent WHERE to_status = 'processing'"
        )
    )
    wrong = [str(o) for o in paid if loyalty[o] != 1 or moves[o] != 1]
    return len(paid), wrong


def all_processed(stack: ChaosStack) -> bool:
    paid, wrong = processed_once(stack)
    return paid > 0 and not wrong


def assert_no_server_error(answers: list[Answer], *, allowed: set[int] = frozenset()) -> None:
    bad = [a for a in answers if a.status >= 500 and a.status not in allowed]
    assert not bad, f"server errors: {bad[:5]}"


def pending_reservations_without_order(stack: ChaosStack) -> int:
    """Reservations (in ``default``) whose order does not exist on any shard."""
    orders = {row[0] for row in stack.sql_shards("SELECT id FROM orders_order")}
    held = stack.sql(
        "default", "SELECT DISTINCT order_id FROM inventory_reservation WHERE status = 'held'"
    )
    return sum(1 for (order_id,) in held if order_id not in orders)


# --- Redis lost and frozen -------------------------------------------------------------------


def test_redis_lost_and_frozen(report):
    with chaos_stack() as stack:
        buyers, sku = stack.buyers, stack.skus[0]
        browse = ["/api/v1/products/", "/", "/products/"]
        # Given a healthy shop, pages cached
        before = [http("GET", stack.url + path) for path in browse]
        assert [a.status for a in before] == [200] * len(browse)

        for fault in ("stopped", "frozen"):
            # When Redis is stopped (SIGTERM) / frozen (SIGSTOP)
            if fault == "stopped":
                stack.redis.stop()
            else:
                stack.redis.freeze()
            # Then browsing is served, checkouts and wallet and card payments succeed
            pages = [http("GET", stack.url + path) for path in browse]
            answers = []
            for i, buyer in enumerate(buyers[:4]):
                method = "card" if i % 2 else "wallet"
                answers += buy(buyer, sku, method, "alpha" if method == "card" else None)
            ready = http("GET", stack.url + "/readyz")
            report(f"redis {fault}: pages {statuses(pages)}, buying {statuses(answers)}")
            report(latency_line(f"redis {fault} writes", answers))
            assert [a.status for a in pages] == [200] * len(browse), pages
            checkouts, payments = answers[0::2], answers[1::2]
            assert [a.status for a in checkouts] == [201] * 4, checkouts
            assert [a.status for a in payments] == [201] * 4, payments
            assert [a.body["status"] for a in payments] == ["succeeded"] * 4, payments
            assert ready.status == 503 and "cache" in ready.body["failed"], ready
            # When it comes back
            if fault == "stopped":
                stack.redis.start()
            else:
                stack.redis.thaw()
            # Then readiness, counters and breakers recover
            eventually(
                lambda: http("GET", stack.url + "/readyz").status == 200,
                timeout=30,
                what="/readyz 200 after Redis returned",
            )
            after = []
            for buyer, method in ((buyers[4], "wallet"), (buyers[5], "card")):
                answer, order_id = place(buyer, sku)
                assert answer.status == 201, answer
                after.append(answer)
                after.append(
                    eventually(
                        lambda b=buyer, o=int(order_id), m=method: (
                            (a := b.pay(o, m, channel="alpha" if m == "card" else None)).status
                            == 201
                            and a
                        ),
                        timeout=30,
                        what=f"{method} payments working again after Redis returned",
                    )
                )
            assert_no_server_error(pages + answers + after)

        eventually(lambda: all_processed(stack), timeout=90, what="every paid order processed")
        finish(stack, report)


# --- Broker lost -----------------------------------------------------------------------------


def test_broker_lost(report):
    with chaos_stack() as stack:
        buyers = stack.buyers

        def round_of_buying() -> list[Answer]:
            answers = []
            for i, buyer in enumerate(buyers):
                answers += buy(buyer, stack.skus[i % 2])
            return answers

        # Given a healthy shop
        before = round_of_buying()
        assert [a.status for a in before] == [201] * 12, before
        report(latency_line("before (checkout+pay)", before))
        # When the broker goes away (the node stopped: connections refused)
        stack.broker.stop()
        during = round_of_buying()
        report(latency_line("broker down (checkout+pay)", during))
        # and then is partitioned away (its port accepts and never answers)
        partition = Blackhole(stack.broker.port)
        try:
            partitioned = round_of_buying()
        finally:
            partition.close()
        report(latency_line("broker partitioned (checkout+pay)", partitioned))
        backlog_during = stack.counts()["outbox_backlog"]
        report(f"outbox backlog while the broker is away: {backlog_during}")
        # Then checkouts and payments still succeed, held in the outbox
        assert [a.status for a in during] == [201] * 12, during
        assert [a.status for a in partitioned] == [201] * 12, partitioned
        assert backlog_during > 0
        # When it comes back, the backlog drains and every paid order is processed once
        stack.broker.start()
        eventually(
            lambda: stack.counts()["outbox_backlog"] == 0, timeout=120, what="outbox drained"
        )
        eventually(lambda: all_processed(stack), timeout=120, what="every paid order processed")
        paid, wrong = processed_once(stack)
        assert paid == 3 * len(buyers) and wrong == []
        assert_no_server_error(before + during + partitioned)
        finish(stack, report, extra={"paid_orders_processed_once": paid})


# --- One shard down --------------------------------------------------------------------------


def test_one_shard_down(report):
    with chaos_stack(own_shard=True, ORDER_RESERVATION_TTL="20") as stack:
        dead = [b for b in stack.buyers if b.alias == stack.own_shard_alias]
        live = [b for b in stack.buyers if b.alias != stack.own_shard_alias]
        assert dead and live
        sku = stack.skus[0]
        # Given orders on the live shard: paid ones, and one left unpaid to expire
        unpaid_answer, unpaid = place(live[0], sku)
        assert unpaid_answer.status == 201
        # When the dead shard's cluster stops (immediate: as in a crash)
        stack.stop_shard()
        # Then buyers on the live shard are unaffected
        live_answers = []
        for buyer in live:
            live_answers += buy(buyer, stack.skus[1])
        assert [a.status for a in live_answers] == [201] * (2 * len(live)), live_answers
        # and those on the dead one get a clean 503, with nothing written
        stock_before = stack.sql(
            "default", "SELECT sku_id, available FROM inventory_stock ORDER BY sku_id"
        )
        refused = [buyer.checkout(sku) for buyer in dead]
        refused += [buyer.call("GET", "/api/v1/orders/") for buyer in dead]
        assert [a.status for a in refused] == [503] * len(refused), refused
        assert all(a.body["code"] == "service_unavailable" for a in refused), refused
        assert all("Retry-After" in a.headers for a in refused), refused
        stock_after = stack.sql(
            "default", "SELECT sku_id, available FROM inventory_stock ORDER BY sku_id"
        )
        assert stock_after == stock_before
        # and background loops finish the live shard: its paid orders processed, its unpaid one
        # expired (ORDER_RESERVATION_TTL=20 s)
        eventually(lambda: all_processed(stack), timeout=90, what="live shard's orders processed")
        eventually(
            lambda: (
                stack.sql("orders_1", "SELECT status FROM orders_order WHERE id = %s", int(unpaid))
                == [("expired",)]
            ),
            timeout=90,
            what="the live shard's unpaid order expired while the other shard was down",
        )
        # and every periodic job (CELERY_BEAT_SCHEDULE, run once in-process) skips the dead
        # shard and finishes the live one rather than stopping at the first shard
        periodic = stack.manage("run_periodic", "--once", check=False, timeout=240)
        failed_jobs = re.findall(r"periodic task (\S+) failed", periodic.stdout + periodic.stderr)
        report(f"periodic jobs failing with a shard down: {failed_jobs or 'none'}")
        assert periodic.returncode == 0, periodic.stderr[-3000:]
        assert failed_jobs == [], f"periodic jobs stopped by the dead shard: {failed_jobs}"
        # When the shard returns, everything resumes
        stack.start_shard()
        back = []
        for buyer in dead:
            back += eventually(
                lambda b=buyer: (answers := buy(b, sku))[0].status == 201 and answers,
                timeout=30,
                what="checkout on the returned shard",
            )
        assert [a.status for a in back] == [201] * (2 * len(dead)), back
        assert_no_server_error(live_answers + back)
        eventually(lambda: all_processed(stack), timeout=90, what="every paid order processed")
        finish(stack, report)


# --- Worker SIGKILL and gunicorn worker SIGKILL ------------------------------------------------


def kill_web_workers(stack: ChaosStack) -> None:
    """SIGKILL gunicorn's workers (its master stays and starts new ones)."""
    for pid in stack.processes["web"].children():
        os.kill(pid, signal.SIGKILL)


BLOCKED_ORDER_INSERT = (
    # (the order is written by one statement whose CTEs insert the order, its lines and event)
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND strpos(query, 'INSERT INTO \"orders_order\"') > 0"
)


def checkout_killed_while_blocked(
    stack: ChaosStack, buyer: Buyer, sku: str, key: str
) -> Answer | None:
    """A checkout whose gunicorn worker is SIGKILLed after the stock was reserved and before
    the order was written: the buyer's shard's order table is held locked meanwhile, so the
    request is surely waiting there. The answer (None: the connection died, as expected)."""
    answers: list[Answer | None] = []

    def request() -> None:
        try:
            answers.append(buyer.checkout(sku, key=key))
        except (OSError, HTTPException):
            answers.append(None)

    with psycopg.connect(stack.database_urls()[buyer.alias]) as lock:
        lock.execute("LOCK TABLE orders_order IN ACCESS EXCLUSIVE MODE")
        thread = threading.Thread(target=request)
        thread.start()
        eventually(
            lambda: stack.sql(buyer.alias, BLOCKED_ORDER_INSERT)[0][0] >= 1,
            timeout=30,
            what="the checkout waiting to write its order",
        )
        kill_web_workers(stack)
        thread.join(30)
    return answers[0] if answers else None


def test_worker_and_web_worker_sigkill(report):
    smtp = StallingSMTPServer()
    mail = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp.port),
        "EMAIL_TIMEOUT": "60",
        "WEB_CONCURRENCY": "1",
        # A killed request's key is locked this long; a killed payment's try recovered after.
        "IDEMPOTENCY_LOCK_TTL": "5",
        "TCC_TRYING_TIMEOUT": "5",
    }
    try:
        with chaos_stack(**mail) as stack:
            buyers, sku = stack.buyers, stack.skus[0]
            # Given a paid order whose processing is stuck sending the buyer's e-mail
            answer, order_id = place(buyers[0], sku)
            assert answer.status == 201
            eventually(lambda: len(smtp.messages) >= 1, what="the reservation mail sent")
            smtp.stall()
            assert buyers[0].pay(int(order_id)).status == 201
            assert smtp.stalled_connection.wait(60), "processing never reached the mail"
            # When the Celery worker is SIGKILLed mid-task, and comes back
            stack.processes["worker"].kill()
            stack.start_process("worker")
            smtp.release.set()
            eventually(lambda: all_processed(stack), timeout=120, what="redelivered, processed")

            # When a gunicorn worker is SIGKILLed mid-checkout and mid-payment (card, with a
            # slow bank so the payment is surely in flight)
            stack.acquirer("PUT", "/channels/alpha/faults", {"latency_ms": 1500})
            retried: list[tuple[str, Answer, Answer]] = []
            for i, buyer in enumerate(buyers[1:5]):
                checkout_key = uuid.uuid4().hex
                if i < 2:  # surely between the stock reserved and the order written
                    first = checkout_killed_while_blocked(stack, buyer, sku, checkout_key)
                else:  # at some point of the request
                    killer = threading.Timer(0.05 * i, kill_web_workers, args=(stack,))
                    killer.start()
                    try:
                        first = buyer.checkout(sku, key=checkout_key)
                    except (OSError, HTTPException):
                        first = None  # the connection died with the worker
                    killer.join()
                eventually(stack.healthy, timeout=60, what="gunicorn replaced its worker")
                again = eventually(
                    lambda b=buyer, k=checkout_key: (
                        (a := b.checkout(sku, key=k)).status != 409 and a
                    ),
                    timeout=60,
                    what="the retried checkout answered (not in flight any more)",
                )
                assert again.status == 201, again
                if first is not None:
                    retried.append(("checkout", first, again))
                order = int(again.body["id"])
                pay_key = uuid.uuid4().hex
                killer = threading.Timer(0.5, kill_web_workers, args=(stack,))
                killer.start()
                try:
                    first = buyer.pay(order, "card", key=pay_key, channel="alpha")
                except (OSError, HTTPException):
                    first = None
                killer.join()
                eventually(stack.healthy, timeout=60, what="gunicorn replaced its worker")
                again = eventually(
                    lambda b=buyer, o=order, k=pay_key: (
                        (a := b.pay(o, "card", key=k, channel="alpha")).status != 409 and a
                    ),
                    timeout=60,
                    what="the retried payment answered (not in flight any more)",
                )
                assert again.status == 201, again
                if first is not None:
                    retried.append(("payment", first, again))
            stack.acquirer("PUT", "/channels/alpha/faults", {})
            # Then every request retried with its key got its original answer
            for kind, first, again in retried:
                assert (first.status, first.body) == (again.status, again.body), kind
            report(f"requests that answered before the kill and were replayed: {len(retried)}")
            # every payment ends decided, every paid order is processed once
            eventually(
                lambda: (
                    not stack.count_everywhere(
                        "SELECT status, count(*) FROM payments_payment "
                        "WHERE status NOT IN ('succeeded', 'failed') GROUP BY 1"
                    )
                ),
                timeout=90,
                what="every payment succeeded or failed",
            )
            eventually(lambda: all_processed(stack), timeout=120, what="every paid order processed")
            # and stock a killed checkout reserved for no order is released after the grace
            # (ORPHAN_RESERVATION_GRACE=5 s in the processes' environment)
            report(f"orphaned reservations left by killed checkouts: "
                   f"{pending_reservations_without_order(stack)}")  # fmt: skip
            eventually(
                lambda: pending_reservations_without_order(stack) == 0,
                timeout=60,
                what="orphaned reservations released after ORPHAN_RESERVATION_GRACE",
            )
            counts = finish(stack, report)
            assert counts["bank_over_captured"] == 0
    finally:
        smtp.close()


# --- Bank faults ------------------------------------------------------------------------------


FAULTS = [
    ("outage", {"outage": True}),
    ("lost answers", {"lose_response_rate": 1.0}),
    ("timeouts", {"timeout_rate": 1.0}),
    ("duplicate webhooks", {"duplicate_webhooks": True}),
]


def test_bank_faults(report):
    with chaos_stack(BREAKER_FAILURE_THRESHOLD="100") as stack:
        buyers = stack.buyers
        answers: list[Answer] = []
        for n, (name, faults) in enumerate(FAULTS):
            # When the bank (channel alpha) has this fault
            assert stack.acquirer("PUT", "/channels/alpha/faults", faults).status == 200
            round_ = in_parallel(
                [
                    lambda b=b, i=i, n=n: buy(b, stack.skus[(n + i) % 2], "card", "alpha")
                    for i, b in enumerate(buyers[:3])
                ]
            )
            got = [a for r in round_ for a in (r if isinstance(r, list) else [])]
            errors = [r for r in round_ if not isinstance(r, list)]
            payments = Counter(a.body.get("status") for a in got if "method" in str(a.body))
            report(f"{name}: answers {statuses(got)}, payments {payments}")
            assert not errors, errors
            answers += got
        # When the bank recovers
        assert stack.acquirer("PUT", "/channels/alpha/faults", {}).status == 200
        # Then no answer was a server error (503 is the clean refusal of an outage)
        assert_no_server_error(answers, allowed={503})
        # every payment ends succeeded or failed, none open
        eventually(
            lambda: (
                not stack.count_everywhere(
                    "SELECT status, count(*) FROM payments_payment "
                    "WHERE status NOT IN ('succeeded', 'failed') GROUP BY 1"
                )
            ),
            timeout=120,
            what="every payment succeeded or failed after recovery",
        )
        # no order captured twice at the bank
        order_of = dict(stack.sql_shards("SELECT id::text, order_id FROM payments_payment"))
        captured = Counter(
            order_of.get(row["payment_id"])
            for row in stack.bank_payments()
            if row["captured_amount"] > 0
        )
        twice = {order: n for order, n in captured.items() if n > 1}
        assert twice == {}, twice
        eventually(lambda: all_processed(stack), timeout=120, what="every paid order processed")
        # and the day reconciles clean
        today = dt.datetime.now(dt.UTC).date().isoformat()
        reconcile = stack.manage("reconcile", "--date", today, "--channel", "alpha", check=False)
        report("reconcile: " + reconcile.stdout.strip())
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        assert "discrepancies: none" in reconcile.stdout, reconcile.stdout
        counts = finish(stack, report, extra={"orders_captured_twice": len(twice)})
        assert counts["bank_over_captured"] == 0
