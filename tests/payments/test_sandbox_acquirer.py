"""The sandbox acquirer, against the real subprocess (no shop database involved)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from apps.payments.sandbox.acquirer import ANOMALIES, is_open, parse_service_hours
from tests.payments.acquirer_process import SandboxAcquirer, closed_service_hours

SECRET = "test-webhook-secret"
HEADER = [
    "channel_transaction_id",
    "payment_id",
    "type",
    "amount",
    "currency",
    "status",
    "settled_at",
    "fee",
]


def new_id(prefix: str = "pay") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(condition: Callable[[], Any], timeout: float = 10, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


class WebhookReceiver:
    """A tiny HTTP server that records every POST; ``fail_next(n)`` answers 500 n times."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._failures = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    failing = receiver._failures > 0
                    receiver._failures -= failing
                    receiver.received.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers),
                            "body": body,
                            "event": json.loads(body),
                            "answered": 500 if failing else 200,
                        }
                    )
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail_next(self, count: int) -> None:
        with self._lock:
            self._failures = count

    def for_payment(self, payment_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.received if r["event"]["payment_id"] == payment_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def acquirer(receiver: WebhookReceiver) -> Iterator[SandboxAcquirer]:
    # A trailing slash on purpose: deliveries must still go to exactly ".../hooks/<channel>/".
    with SandboxAcquirer(webhook_url=f"{receiver.url}/hooks/", secret=SECRET, seed=7) as process:
        yield process


@pytest.fixture(autouse=True)
def _healthy_channels(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "acquirer" in request.fixturenames:
        request.getfixturevalue("acquirer").reset()


def authorize(
    acquirer: SandboxAcquirer,
    payment_id: str,
    amount: int = 1000,
    channel: str = "alpha",
    currency: str = "EUR",
    timeout: float = 10,
) -> tuple[int, Any]:
    body = {"payment_id": payment_id, "amount": amount, "currency": currency, "method": "card"}
    return acquirer.call("POST", f"/channels/{channel}/payments/authorize", body, timeout=timeout)


def act(
    acquirer: SandboxAcquirer, payment_id: str, action: str, body: Any = None, channel="alpha"
) -> tuple[int, Any]:
    return acquirer.call("POST", f"/channels/{channel}/payments/{payment_id}/{action}", body)


# --- Catalogue and pure rules ---------------------------------------------------------------------


def test_healthz_and_catalogue(acquirer: SandboxAcquirer) -> None:
    assert acquirer.call("GET", "/healthz") == (200, {"status": "ok"})
    status, channels = acquirer.call("GET", "/channels/")
    assert status == 200
    by_code = {c["code"]: c for c in channels}
    assert {"alpha", "beta", "gamma"} <= set(by_code)
    expected = {
        "alpha": ("Alpha Bank", 40, 290, 30, "00:00-24:00", 50, 10_000_000),
        "beta": ("Beta Payments", 120, 190, 20, "00:00-24:00", 50, 5_000_000),
        "gamma": ("Gamma Pay", 250, 120, 10, "06:00-22:00", 100, 1_000_000),
    }
    for code, (name, latency, bps, fixed, hours, low, high) in expected.items():
        channel = by_code[code]
        assert channel["methods"] == ["card"]
        assert (
            channel["name"],
            channel["latency_ms"],
            channel["fee_bps"],
            channel["fee_fixed"],
            channel["service_hours"],
            channel["min_amount"],
            channel["max_amount"],
        ) == (name, latency, bps, fixed, hours, low, high)
        assert channel["faults"]["outage"] is False
        assert channel["faults"]["settlement_anomalies"] == []


def test_service_hours_rule() -> None:
    at = lambda hh, mm=0: datetime(2025, 1, 1, hh, mm, tzinfo=UTC)  # noqa: E731
    assert parse_service_hours("06:00-22:00") == (360, 1320)
    assert is_open("00:00-24:00", at(0)) and is_open("00:00-24:00", at(23, 59))
    assert is_open("06:00-22:00", at(6)) and not is_open("06:00-22:00", at(5, 59))
    assert not is_open("06:00-22:00", at(22)) and is_open("06:00-22:00", at(21, 59))
    assert is_open("22:00-06:00", at(23)) and is_open("22:00-06:00", at(5, 59))
    assert not is_open("22:00-06:00", at(12))
    for bad in ("6:00-22:00", "06:00-25:00", "06:60-22:00", "always"):
        with pytest.raises(ValueError):
            parse_service_hours(bad)


# --- Happy paths and idempotency ------------------------------------------------------------------


def test_authorize_capture_refund_and_status(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    status, auth = authorize(acquirer, pid, 1000)
    assert status == 200
    assert auth["status"] == "authorized" and auth["decline_reason"] is None
    assert (auth["payment_id"], auth["channel"], auth["amount"], auth["currency"]) == (
        pid,
        "alpha",
        1000,
        "EUR",
    )
    view = acquirer.payment("alpha", pid)
    assert (view["status"], view["captured_amount"], view["refunded_amount"]) == (
        "authorized",
        0,
        0,
    )
    assert view["transaction_id"] == auth["transaction_id"]

    status, captured = act(acquirer, pid, "capture", {"amount": 600})
    assert status == 200
    assert (captured["status"], captured["captured_amount"]) == ("captured", 600)

    status, refund = act(acquirer, pid, "refund", {"refund_id": new_id("rf"), "amount": 250})
    assert status == 200
    assert (refund["status"], refund["amount"], refund["payment_id"]) == ("refunded", 250, pid)
    view = acquirer.payment("alpha", pid)
    assert (view["status"], view["refunded_amount"]) == ("captured", 250)

    status, _ = act(acquirer, pid, "refund", {"refund_id": new_id("rf"), "amount": 350})
    assert status == 200
    view = acquirer.payment("alpha", pid)
    assert (view["status"], view["captured_amount"], view["refunded_amount"]) == (
        "refunded",
        600,
        600,
    )
    assert len(view["refunds"]) == 2
    status, body = act(acquirer, pid, "refund", {"refund_id": new_id("rf"), "amount": 1})
    assert status == 409 and "exceed" in body["error"]


def test_void_and_conflicts(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    authorize(acquirer, pid)
    status, voided = act(acquirer, pid, "void")
    assert (status, voided["status"]) == (200, "voided")
    assert act(acquirer, pid, "void") == (200, voided)  # idempotent
    assert act(acquirer, pid, "capture")[0] == 409
    assert act(acquirer, pid, "refund", {"refund_id": new_id("rf"), "amount": 10})[0] == 409
    assert acquirer.payment("alpha", pid)["status"] == "voided"

    captured = new_id()
    authorize(acquirer, captured)
    act(acquirer, captured, "capture")
    assert act(acquirer, captured, "void")[0] == 409
    assert act(acquirer, captured, "capture", {"amount": 5000})[0] == 200  # unchanged

    uncaptured = new_id()
    authorize(acquirer, uncaptured)
    assert act(acquirer, uncaptured, "refund", {"refund_id": new_id("rf"), "amount": 10})[0] == 409
    assert act(acquirer, uncaptured, "capture", {"amount": 1001})[0] == 400

    unknown = new_id()
    assert act(acquirer, unknown, "capture")[0] == 404
    assert act(acquirer, unknown, "void")[0] == 404
    assert acquirer.call("GET", f"/channels/alpha/payments/{unknown}") == (
        404,
        {"status": "not_found"},
    )


def test_authorize_is_idempotent(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    first = authorize(acquirer, pid)
    assert authorize(acquirer, pid) == first

    # Concurrent duplicates: still one authorization.
    racing = new_id()
    answers: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(authorize(acquirer, racing)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({a[1]["transaction_id"] for a in answers}) == 1
    assert {a[0] for a in answers} == {200}


def test_capture_and_refund_are_idempotent(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    authorize(acquirer, pid, 2000)
    first = act(acquirer, pid, "capture")
    assert first[1]["captured_amount"] == 2000
    assert act(acquirer, pid, "capture") == first

    refund = {"refund_id": new_id("rf"), "amount": 500}
    once = act(acquirer, pid, "refund", refund)
    assert act(acquirer, pid, "refund", refund) == once
    assert acquirer.payment("alpha", pid)["refunded_amount"] == 500
    status, body = act(acquirer, pid, "refund", {**refund, "amount": 600})
    assert (status, body["error"]) == (409, "refund_id reused with other parameters")


def test_reusing_a_payment_id_with_other_parameters_is_409(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    authorize(acquirer, pid, 1000)
    conflict = (409, {"error": "payment_id reused with other parameters"})
    assert authorize(acquirer, pid, 1001) == conflict
    assert authorize(acquirer, pid, 1000, currency="USD") == conflict
    assert acquirer.payment("alpha", pid)["amount"] == 1000


def test_bad_requests(acquirer: SandboxAcquirer) -> None:
    assert authorize(acquirer, new_id(), 49)[0] == 400
    assert authorize(acquirer, new_id(), 10_000_001)[0] == 400
    assert authorize(acquirer, new_id(), 99, channel="gamma")[0] == 400  # before the hours
    assert acquirer.call("POST", "/channels/alpha/payments/authorize", {"amount": 100})[0] == 400
    assert (
        acquirer.call(
            "POST", "/channels/alpha/payments/authorize", {"payment_id": "x", "amount": "100"}
        )[0]
        == 400
    )
    assert authorize(acquirer, new_id(), channel="zeta")[0] == 404
    assert acquirer.call("GET", "/nowhere")[0] == 404
    assert acquirer.call("GET", "/channels/zeta/payments/x")[0] == 404

    raw = http.client.HTTPConnection("127.0.0.1", acquirer.port, timeout=5)
    raw.request("POST", "/channels/alpha/payments/authorize", body=b"{not json")
    answer = raw.getresponse()
    assert answer.status == 400 and "error" in json.loads(answer.read())
    raw.close()

    for faults in (
        {"error_rate": 2},
        {"decline_rate": -0.1},
        {"outage": "yes"},
        {"latency_ms": -1},
        {"latency_ms": 1.5},
        {"settlement_anomalies": ["nope"]},
        {"service_hours": "25:00-26:00"},
        {"bogus": True},
    ):
        status, body = acquirer.call("PUT", "/channels/alpha/faults", faults)
        assert status == 400 and body["error"], faults
    assert acquirer.call("PUT", "/channels/zeta/faults", {})[0] == 404


def test_faults_are_replaced_and_reset_with_an_empty_object(acquirer: SandboxAcquirer) -> None:
    channel = acquirer.set_faults("beta", decline_rate=0.5, latency_ms=10)
    assert channel["code"] == "beta"
    assert (channel["faults"]["decline_rate"], channel["faults"]["latency_ms"]) == (0.5, 10)
    channel = acquirer.set_faults("beta", outage=True)
    assert channel["faults"]["decline_rate"] == 0.0 and channel["faults"]["outage"] is True
    status, channel = acquirer.call("PUT", "/channels/beta/faults", {})
    assert status == 200 and channel["faults"]["outage"] is False


# --- Faults ---------------------------------------------------------------------------------------


def test_outage_answers_503_without_effect(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    acquirer.set_faults("alpha", outage=True)
    assert authorize(acquirer, pid) == (503, {"error": "outage"})
    assert acquirer.call("GET", f"/channels/alpha/payments/{pid}")[0] == 503
    acquirer.reset()
    assert acquirer.payment("alpha", pid) == {"status": "not_found"}


def test_errors_answer_500_without_effect(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    acquirer.set_faults("alpha", error_rate=1.0)
    assert authorize(acquirer, pid) == (500, {"error": "internal"})
    # Status queries ignore error_rate.
    assert acquirer.payment("alpha", pid) == {"status": "not_found"}
    acquirer.reset()
    authorize(acquirer, pid)
    acquirer.set_faults("alpha", error_rate=1.0)
    assert act(acquirer, pid, "capture")[0] == 500
    assert acquirer.payment("alpha", pid)["status"] == "authorized"


def test_decline_is_recorded_and_stays(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    acquirer.set_faults("alpha", decline_rate=1.0)
    status, first = authorize(acquirer, pid)
    assert status == 200
    assert first["status"] == "declined" and isinstance(first["decline_reason"], str)
    acquirer.reset()
    assert authorize(acquirer, pid) == (200, first)
    assert acquirer.payment("alpha", pid)["status"] == "declined"
    assert act(acquirer, pid, "capture")[0] == 409


def test_lost_response_still_authorizes(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    acquirer.set_faults("alpha", lose_response_rate=1.0)
    with pytest.raises((OSError, http.client.HTTPException)):
        authorize(acquirer, pid)
    # Status queries ignore the lose fault, even while it is on.
    view = acquirer.payment("alpha", pid)
    assert view["status"] == "authorized"
    acquirer.reset()
    status, retried = authorize(acquirer, pid)
    assert (status, retried["transaction_id"]) == (200, view["transaction_id"])


def test_timeout_acts_late(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    acquirer.set_faults("alpha", timeout_rate=1.0, timeout_ms=1500)
    started = time.monotonic()
    with pytest.raises(OSError):  # TimeoutError or URLError(timeout)
        authorize(acquirer, pid, timeout=0.5)
    assert time.monotonic() - started < 1.2
    assert acquirer.payment("alpha", pid) == {"status": "not_found"}  # not yet
    wait_for(lambda: acquirer.payment("alpha", pid)["status"] == "authorized", timeout=5)
    assert time.monotonic() - started >= 1.4


def test_latency(acquirer: SandboxAcquirer) -> None:
    started = time.monotonic()
    authorize(acquirer, new_id(), channel="beta")
    assert time.monotonic() - started >= 0.12  # beta's base latency

    acquirer.set_faults("alpha", latency_ms=400)
    started = time.monotonic()
    assert authorize(acquirer, pid := new_id())[0] == 200
    assert time.monotonic() - started >= 0.44
    started = time.monotonic()
    assert acquirer.payment("alpha", pid)["status"] == "authorized"
    assert time.monotonic() - started >= 0.44  # status queries are delayed too


def test_service_hours(acquirer: SandboxAcquirer) -> None:
    pid = new_id()
    authorize(acquirer, pid)
    channel = acquirer.set_faults("alpha", service_hours=closed_service_hours())
    assert channel["open"] is False
    assert authorize(acquirer, new_id()) == (503, {"error": "closed"})
    assert act(acquirer, pid, "capture") == (503, {"error": "closed"})
    assert acquirer.payment("alpha", pid)["status"] == "authorized"  # still answered
    acquirer.set_faults("alpha", service_hours=closed_service_hours(), outage=True)
    assert authorize(acquirer, new_id()) == (503, {"error": "closed"})  # hours come first
    acquirer.reset()
    assert act(acquirer, pid, "capture")[0] == 200

    # Gamma's own hours (06:00-22:00 UTC) decide, unless the minute turns meanwhile.
    before = is_open("06:00-22:00", datetime.now(UTC))
    status, _ = authorize(acquirer, new_id(), 500, channel="gamma")
    if before == is_open("06:00-22:00", datetime.now(UTC)):
        assert status == (200 if before else 503)


# --- Settlement -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settled() -> Iterator[tuple[SandboxAcquirer, date, list[dict[str, str]]]]:
    """A fresh acquirer with four captures (one partial, then partly refunded), an
    authorization and a void on alpha: (process, day, expected clean rows)."""
    with SandboxAcquirer() as process:
        moments = []
        for pid, amount, capture in (
            ("s-1", 1000, None),
            ("s-2", 2550, None),
            ("s-3", 777, 500),
            ("s-4", 5000, None),
        ):
            authorize(process, pid, amount)
            moments.append(act(process, pid, "capture", {"amount": capture} if capture else {})[1])
        refund = act(process, "s-3", "refund", {"refund_id": "s-3-r1", "amount": 200})[1]
        authorize(process, "s-5", 900)
        authorize(process, "s-6", 900)
        act(process, "s-6", "void")
        days = {m["captured_at"][:10] for m in moments} | {refund["created_at"][:10]}
        if len(days) != 1:
            pytest.skip("the settlement fixture straddled midnight UTC")
        day = date.fromisoformat(days.pop())
        tx = {m["payment_id"]: m["transaction_id"] for m in moments}
        at = {m["payment_id"]: m["captured_at"] for m in moments}

        def row(pid: str, kind: str, amount: int, fee: int) -> dict[str, str]:
            return {
                "channel_transaction_id": refund["transaction_id"] if kind == "refund" else tx[pid],
                "payment_id": pid,
                "type": kind,
                "amount": str(amount),
                "currency": "EUR",
                "status": "settled",
                "settled_at": refund["created_at"] if kind == "refund" else at[pid],
                "fee": str(fee),
            }

        clean = [
            row("s-1", "capture", 1000, 1000 * 290 // 10_000 + 30),  # 59
            row("s-2", "capture", 2550, 2550 * 290 // 10_000 + 30),  # 103
            row("s-3", "capture", 500, 500 * 290 // 10_000 + 30),  # 44
            row("s-3", "refund", 200, 0),
            row("s-4", "capture", 5000, 5000 * 290 // 10_000 + 30),  # 175
        ]
        yield process, day, clean


def test_settlement_file_of_a_clean_day(settled) -> None:
    process, day, clean = settled
    status, text = process.call("GET", f"/settlements/alpha/{day}.csv")
    assert status == 200
    assert text.splitlines()[0] == ",".join(HEADER)
    rows = process.settlement("alpha", day)
    assert rows == clean
    assert [r["fee"] for r in rows] == ["59", "103", "44", "0", "175"]
    assert datetime.fromisoformat(rows[0]["settled_at"]).utcoffset() == timedelta(0)
    assert process.settlement("alpha", day - timedelta(days=1)) == []
    assert process.settlement("beta", day) == []
    assert process.call("GET", "/settlements/alpha/2025-13-01.csv")[0] == 400
    assert process.call("GET", "/settlements/zeta/2025-01-01.csv")[0] == 404


def _extra_row(day: date) -> dict[str, str]:
    return {
        "channel_transaction_id": f"alpha_tx_bank-only-{day}-1",
        "payment_id": f"bank-only-{day}-1",
        "type": "capture",
        "amount": "1000",
        "currency": "EUR",
        "status": "settled",
        "settled_at": f"{day}T12:00:00.000000+00:00",
        "fee": "59",
    }


@pytest.mark.parametrize("anomaly", ANOMALIES)
def test_settlement_anomaly(settled, anomaly: str) -> None:
    process, day, clean = settled
    process.set_faults("alpha", settlement_anomalies=[anomaly])
    try:
        rows = process.settlement("alpha", day)
    finally:
        process.reset()
    first = clean[0]
    expected = {
        "missing": clean[1:],
        "amount": [{**first, "amount": "1001"}, *clean[1:]],
        "status": [{**first, "status": "reversed"}, *clean[1:]],
        "currency": [{**first, "currency": "USD"}, *clean[1:]],
        "duplicate": [first, *clean],
        "extra": [_extra_row(day), *clean],  # "bank-only-…" sorts before "s-…"
    }[anomaly]
    assert rows == expected
    assert process.settlement("alpha", day) == clean  # reset: clean again


def test_settlement_anomalies_hit_different_rows(settled) -> None:
    process, day, clean = settled
    process.set_faults("alpha", settlement_anomalies=list(reversed(ANOMALIES)))
    try:
        rows = process.settlement("alpha", day)
    finally:
        process.reset()
    s2, s3, s3_refund, s4 = clean[1:]
    assert rows == [
        _extra_row(day),
        # s-1's capture is missing
        {**s2, "amount": "2551"},
        {**s3, "status": "reversed"},
        {**s3_refund, "currency": "USD"},
        s4,
        s4,
    ]


# --- Webhooks -------------------------------------------------------------------------------------


def _check_signed(delivery: dict[str, Any], channel: str) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in delivery["headers"].items()}
    assert delivery["path"] == f"/hooks/{channel}/"
    assert headers["content-type"] == "application/json"
    timestamp = int(headers["x-acquirer-timestamp"])
    assert abs(time.time() - timestamp) < 60
    expected = hmac.new(
        f"{SECRET}-{channel}".encode(), f"{timestamp}.".encode() + delivery["body"], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["x-acquirer-signature"], f"sha256={expected}")
    event = delivery["event"]
    assert set(event) == {
        "event_id",
        "type",
        "channel",
        "payment_id",
        "refund_id",
        "status",
        "amount",
        "currency",
        "occurred_at",
    }
    uuid.UUID(event["event_id"])
    assert event["channel"] == channel and event["currency"] == "EUR"
    assert datetime.fromisoformat(event["occurred_at"]).utcoffset() == timedelta(0)
    return event


def test_webhooks_are_signed_and_sent_once_per_change(
    acquirer: SandboxAcquirer, receiver: WebhookReceiver
) -> None:
    paid, voided, declined = new_id(), new_id(), new_id()
    authorize(acquirer, paid, 1500)
    authorize(acquirer, paid, 1500)  # a replay: no second event
    act(acquirer, paid, "capture")
    act(acquirer, paid, "capture")
    refund_id = new_id("rf")
    act(acquirer, paid, "refund", {"refund_id": refund_id, "amount": 400})
    act(acquirer, paid, "refund", {"refund_id": refund_id, "amount": 400})
    authorize(acquirer, voided, 700)
    act(acquirer, voided, "void")
    acquirer.set_faults("beta", decline_rate=1.0)
    authorize(acquirer, declined, 800, channel="beta")

    # One sender thread delivers in order: once the last event is in, all earlier ones are.
    wait_for(lambda: receiver.for_payment(declined))
    events = [_check_signed(d, "alpha") for d in receiver.for_payment(paid)]
    assert [(e["type"], e["status"], e["amount"], e["refund_id"]) for e in events] == [
        ("payment.authorized", "authorized", 1500, None),
        ("payment.captured", "captured", 1500, None),
        ("payment.refunded", "refunded", 400, refund_id),
    ]
    assert len({e["event_id"] for e in events}) == 3
    events = [_check_signed(d, "alpha") for d in receiver.for_payment(voided)]
    assert [e["type"] for e in events] == ["payment.authorized", "payment.voided"]
    (event,) = [_check_signed(d, "beta") for d in receiver.for_payment(declined)]
    assert (event["type"], event["status"]) == ("payment.declined", "declined")


def test_webhooks_duplicated_on_request(
    acquirer: SandboxAcquirer, receiver: WebhookReceiver
) -> None:
    acquirer.set_faults("alpha", duplicate_webhooks=True)
    pid = new_id()
    authorize(acquirer, pid)
    deliveries = wait_for(lambda: len(receiver.for_payment(pid)) >= 2 and receiver.for_payment(pid))
    time.sleep(0.3)
    assert len(receiver.for_payment(pid)) == 2
    first, second = (_check_signed(d, "alpha") for d in deliveries)
    assert first == second  # same event, same event_id


def test_webhooks_retried_after_failures(
    acquirer: SandboxAcquirer, receiver: WebhookReceiver
) -> None:
    receiver.fail_next(2)
    pid = new_id()
    authorize(acquirer, pid)
    wait_for(lambda: [d for d in receiver.for_payment(pid) if d["answered"] == 200])
    deliveries = receiver.for_payment(pid)
    assert [d["answered"] for d in deliveries] == [500, 500, 200]
    assert len({_check_signed(d, "alpha")["event_id"] for d in deliveries}) == 1


# --- The command and restarts ---------------------------------------------------------------------


def test_command_serves_and_data_survives_a_restart() -> None:
    process = SandboxAcquirer(via_manage_py=True, faults={"beta": {"outage": True}})
    try:
        process.start()
        assert any("listening on http://127.0.0.1:" in line for line in process.output)
        url = process.url
        pid = new_id()
        authorize(process, pid, 1200)
        act(process, pid, "capture")
        assert authorize(process, new_id(), channel="beta")[0] == 503  # --faults applied

        assert process.stop() == 0  # SIGTERM: a clean exit
        process.restart()
        assert process.url == url
        view = process.payment("alpha", pid)
        assert (view["status"], view["captured_amount"]) == ("captured", 1200)
        assert authorize(process, pid, 1200)[1]["transaction_id"] == view["transaction_id"]
    finally:
        process.close()
