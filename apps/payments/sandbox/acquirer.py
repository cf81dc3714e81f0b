"""The sandbox acquirer: a separate process that plays several banks ("channels") over HTTP.

Stdlib only (no Django), so it runs and is tested without the shop's settings or databases.

API (JSON in and out; amounts are integers in minor units; trailing slashes optional)::

    GET  /healthz                                   {"status": "ok"}
    GET  /channels/                                 [channel, ...]
    GET  /channels/{code}                           channel
    PUT  /channels/{code}/faults                    replace the channel's faults → channel
    POST /channels/{code}/payments/authorize        {"payment_id","amount","currency","method"}
    POST /channels/{code}/payments/{id}/capture     optional {"amount"}
    POST /channels/{code}/payments/{id}/void
    POST /channels/{code}/payments/{id}/refund      {"refund_id","amount"}
    GET  /channels/{code}/payments/{id}             payment, or 404 {"status": "not_found"}
    GET  /settlements/{code}/{YYYY-MM-DD}.csv       the channel's settlement file for that UTC day

Contracts:

* Payment calls are idempotent per (channel, payment_id) and refunds per (channel, refund_id):
  repeating a call returns the stored result and never has a second effect; the same id with
  other parameters is 409.
* Payment calls answer 503 ``{"error": "closed"}`` outside the channel's service hours (UTC),
  then apply the channel's faults in this order: ``outage`` (503, no effect), latency (base +
  ``latency_ms``), ``error_rate`` (500, no effect), ``timeout_rate`` (stall ``timeout_ms``, then
  act), ``decline_rate`` (authorize only: declined, recorded), the effect, and
  ``lose_response_rate`` (the connection is closed without an answer; the effect stands).
* Status queries ignore service hours and the error/decline/timeout/lose faults, but answer 503
  during an ``outage`` and are delayed by the channel's latency.
* Every state change (authorized, declined, captured, voided, refunded) is POSTed, signed, to
  ``{webhook_url}/{channel}/`` by one background thread, in order, never delaying the API.
* Payments and refunds live in SQLite and survive restarts; faults live in memory only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import hmac
import http.client
import io
import json
import logging
import os
import queue
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
DEFAULT_DB = PROJECT_ROOT / "var" / "acquirer.sqlite3"
# The public sandbox default, as in settings.ACQUIRER_WEBHOOK_SECRET: not a real secret.
DEFAULT_SECRET = "sandbox-webhook-secret"  # noqa: S105
# The first line the server prints; test helpers read the bound port from it.
LISTENING = "Sandbox acquirer listening on {url}"

MAX_BODY_BYTES = 1_000_000
# Ids travel in URL paths: keep them to URL-safe characters.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}")
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
HOURS_PATTERN = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
DECLINE_REASON = "do_not_honor"


# --- Channels -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """A simulated bank's static terms. ``latency_ms`` is the simulated base latency."""

    code: str
    name: str
    methods: tuple[str, ...]
    latency_ms: int
    fee_bps: int
    fee_fixed: int
    service_hours: str
    min_amount: int
    max_amount: int

    def fee(self, amount: int) -> int:
        """The settlement fee of a capture: basis points rounded down, plus the fixed fee."""
        return amount * self.fee_bps // 10_000 + self.fee_fixed

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "methods": list(self.methods),
            "latency_ms": self.latency_ms,
            "fee_bps": self.fee_bps,
            "fee_fixed": self.fee_fixed,
            "service_hours": self.service_hours,
            "min_amount": self.min_amount,
            "max_amount": self.max_amount,
        }


CHANNELS: dict[str, Channel] = {
    channel.code: channel
    for channel in (
        Channel("alpha", "Alpha Bank", ("card",), 40, 290, 30, "00:00-24:00", 50, 10_000_000),
        Channel("beta", "Beta Payments", ("card",), 120, 190, 20, "00:00-24:00", 50, 5_000_000),
        Channel("gamma", "Gamma Pay", ("card",), 250, 120, 10, "06:00-22:00", 100, 1_000_000),
    )
}


def parse_service_hours(text: str) -> tuple[int, int]:
    """``"HH:MM-HH:MM"`` → (start, end) in minutes after midnight; ``24:00`` is allowed as an
    end. Raises ValueError on anything else."""
    match = HOURS_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"service_hours {text!r} must look like 'HH:MM-HH:MM'")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if m1 > 59 or m2 > 59 or start > 24 * 60 or end > 24 * 60:
        raise ValueError(f"service_hours {text!r} is not a valid time range")
    return start % (24 * 60), end


def is_open(service_hours: str, at: datetime) -> bool:
    """Whether a channel with these UTC service hours takes payments at ``at``. The start is
    inclusive and the end exclusive; a start after the end spans midnight ("22:00-06:00"); a
    start equal to the end, like "00:00-24:00", means always open."""
    start, end = parse_service_hours(service_hours)
    end %= 24 * 60
    at = at.astimezone(UTC)
    minute = at.hour * 60 + at.minute
    if start == end:
        return True
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


# --- Faults ---------------------------------------------------------------------------------------

RATE_FAULTS = ("error_rate", "decline_rate", "lose_response_rate", "timeout_rate")
BOOL_FAULTS = ("outage", "duplicate_webhooks")
MS_FAULTS = ("latency_ms", "timeout_ms")
# Settlement anomalies, in the order they pick their rows.
ANOMALIES = ("missing", "amount", "status", "currency", "duplicate", "extra")
FAULT_DEFAULTS: dict[str, Any] = {
    "outage": False,
    "error_rate": 0.0,
    "decline_rate": 0.0,
    "lose_response_rate": 0.0,
    "timeout_rate": 0.0,
    "latency_ms": 0,
    "timeout_ms": 10_000,
    "duplicate_webhooks": False,
    "settlement_anomalies": [],
    "service_hours": None,
}
MAX_MS = 600_000


def healthy_faults() -> dict[str, Any]:
    return {**FAULT_DEFAULTS, "settlement_anomalies": []}


def validate_faults(data: Any) -> dict[str, Any]:
    """A complete fault set from a (partial) one: keys not given take their healthy default, so
    ``{}`` is a healthy channel. ``service_hours: null`` restores the channel's own hours.
    Raises ValueError naming the first bad key."""
    if not isinstance(data, dict):
        raise ValueError("faults must be a JSON object")
    unknown = sorted(set(data) - set(FAULT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown fault(s): {', '.join(unknown)}")
    faults = healthy_faults()
    for key, value in data.items():
        if key in BOOL_FAULTS:
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            faults[key] = value
        elif key in RATE_FAULTS:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{key} must be a number from 0 to 1")
            faults[key] = float(value)
        elif key in MS_FAULTS:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MS:
                raise ValueError(f"{key} must be an integer number of ms from 0 to {MAX_MS}")
            faults[key] = value
        elif key == "settlement_anomalies":
            if not isinstance(value, list) or any(item not in ANOMALIES for item in value):
                raise ValueError(f"settlement_anomalies must be a list of {', '.join(ANOMALIES)}")
            faults[key] = list(dict.fromkeys(value))
        elif key == "service_hours":
            if value is not None:
                parse_service_hours(value)
            faults[key] = value
    return faults


def parse_faults_option(text: str | None) -> dict[str, dict[str, Any]]:
    """The ``--faults`` option: JSON ``{"alpha": {"decline_rate": 0.2}, ...}``, validated.
    Raises ValueError."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--faults is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("--faults must be a JSON object of channel code → faults")
    result = {}
    for code, faults in data.items():
        if code not in CHANNELS:
            raise ValueError(f"--faults: unknown channel {code!r}")
        try:
            result[code] = validate_faults(faults)
        except ValueError as exc:
            raise ValueError(f"--faults for {code}: {exc}") from exc
    return result


# --- Time -----------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC, always with microseconds, so stored strings sort as times."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


# --- Errors and responses -------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer: HTTP ``status`` with JSON ``body``."""

    def __init__(self, status: int, error: str, /, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    # Close the connection without writing anything (a lost response).
    lose: bool = False

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, json.dumps(data).encode())


# --- Storage --------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    channel TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    amount INTEGER NOT NULL,
    captured_amount INTEGER NOT NULL DEFAULT 0,
    refunded_amount INTEGER NOT NULL DEFAULT 0,
    currency TEXT NOT NULL,
    method TEXT NOT NULL,
    decline_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    captured_at TEXT,
    PRIMARY KEY (channel, payment_id)
);
CREATE TABLE IF NOT EXISTS refunds (
    channel TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    transaction_id TEXT NOT NULL UNIQUE,
    amount INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (channel, refund_id)
);
CREATE INDEX IF NOT EXISTS payments_captured_day ON payments (channel, captured_at);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (channel, payment_id);
CREATE INDEX IF NOT EXISTS refunds_created_day ON refunds (channel, created_at);
"""
PAYMENT_FIELDS = (
    "payment_id",
    "channel",
    "transaction_id",
    "status",
    "amount",
    "captured_amount",
    "refunded_amount",
    "currency",
    "method",
    "decline_reason",
    "created_at",
    "updated_at",
    "captured_at",
)
SETTLEMENT_HEADER = (
    "channel_transaction_id",
    "payment_id",
    "type",
    "amount",
    "currency",
    "status",
    "settled_at",
    "fee",
)


def _transaction_id(code: str, kind: str) -> str:
    return f"{code}_{kind}_{uuid.uuid4().hex}"


class Store:
    """Payments and refunds in one SQLite file. One connection, guarded by one lock: every
    read and every read-check-write happens under it, so concurrent requests are serialised."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @staticmethod
    def _payment(conn: sqlite3.Connection, code: str, payment_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT * FROM payments WHERE channel = ? AND payment_id = ?", (code, payment_id)
        ).fetchone()
        return {name: row[name] for name in PAYMENT_FIELDS} if row else None

    @staticmethod
    def _refunds(conn: sqlite3.Connection, code: str, payment_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT refund_id, transaction_id, amount, created_at FROM refunds "
            "WHERE channel = ? AND payment_id = ? ORDER BY created_at, refund_id",
            (code, payment_id),
        ).fetchall()
        return [{**dict(row), "status": "refunded"} for row in rows]

    def get(self, code: str, payment_id: str) -> dict[str, Any] | None:
        """The payment with its refunds, or None."""
        with self._lock:
            payment = self._payment(self._conn, code, payment_id)
            if payment:
                payment["refunds"] = self._refunds(self._conn, code, payment_id)
            return payment

    def authorize(
        self, code: str, payment_id: str, amount: int, currency: str, method: str, declined: bool
    ) -> tuple[dict[str, Any], bool]:
        """(payment, created). An existing payment with the same parameters is returned as it
        is (``declined`` is then ignored); other parameters raise 409."""
        with self._transaction() as conn:
            payment = self._payment(conn, code, payment_id)
            if payment:
                if (payment["amount"], payment["currency"], payment["method"]) != (
                    amount,
                    currency,
                    method,
                ):
                    raise ApiError(409, "payment_id reused with other parameters")
                return payment, False
            now = iso(utcnow())
            conn.execute(
                "INSERT INTO payments (channel, payment_id, transaction_id, status, amount, "
                "currency, method, decline_reason, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    code,
                    payment_id,
                    _transaction_id(code, "tx"),
                    "declined" if declined else "authorized",
                    amount,
                    currency,
                    method,
                    DECLINE_REASON if declined else None,
                    now,
                    now,
                ),
            )
            return self._payment(conn, code, payment_id), True

    def _existing(self, conn: sqlite3.Connection, code: str, payment_id: str) -> dict[str, Any]:
        payment = self._payment(conn, code, payment_id)
        if not payment:
            raise ApiError(404, "payment not found", status="not_found")
        return payment

    def capture(
        self, code: str, payment_id: str, amount: int | None
    ) -> tuple[dict[str, Any], bool]:
        """(payment, changed). Capturing a captured (or refunded) payment changes nothing."""
        with self._transaction() as conn:
            payment = self._existing(conn, code, payment_id)
            if payment["status"] in ("captured", "refunded"):
                return payment, False
            if payment["status"] != "authorized":
                raise ApiError(
                    409, f"cannot capture a {payment['status']} payment", status=payment["status"]
                )
            amount = payment["amount"] if amount is None else amount
            if amount > payment["amount"]:
                raise ApiError(400, "capture amount exceeds the authorized amount")
            now = iso(utcnow())
            conn.execute(
                "UPDATE payments SET status = 'captured', captured_amount = ?, captured_at = ?, "
                "updated_at = ? WHERE channel = ? AND payment_id = ?",
                (amount, now, now, code, payment_id),
            )
            return self._payment(conn, code, payment_id), True

    def void(self, code: str, payment_id: str) -> tuple[dict[str, Any], bool]:
        """(payment, changed). Voiding a voided payment changes nothing; only an authorized
        payment can be voided (409 otherwise)."""
        with self._transaction() as conn:
            payment = self._existing(conn, code, payment_id)
            if payment["status"] == "voided":
                return payment, False
            if payment["status"] != "authorized":
                raise ApiError(
                    409, f"cannot void a {payment['status']} payment", status=payment["status"]
                )
            conn.execute(
                "UPDATE payments SET status = 'voided', updated_at = ? "
                "WHERE channel = ? AND payment_id = ?",
                (iso(utcnow()), code, payment_id),
            )
            return self._payment(conn, code, payment_id), True

    def refund(
        self, code: str, payment_id: str, refund_id: str, amount: int
    ) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """(refund, payment, changed). A known refund_id with the same payment and amount is
        returned as it is; other parameters, a payment that is not captured or a total above
        the captured amount raise 409. A fully refunded payment's status becomes "refunded"."""
        with self._transaction() as conn:
            payment = self._existing(conn, code, payment_id)
            row = conn.execute(
                "SELECT * FROM refunds WHERE channel = ? AND refund_id = ?", (code, refund_id)
            ).fetchone()
            if row:
                if (row["payment_id"], row["amount"]) != (payment_id, amount):
                    raise ApiError(409, "refund_id reused with other parameters")
                return self._refund_view(dict(row), payment), payment, False
            if payment["status"] not in ("captured", "refunded"):
                raise ApiError(
                    409, f"cannot refund a {payment['status']} payment", status=payment["status"]
                )
            if payment["refunded_amount"] + amount > payment["captured_amount"]:
                raise ApiError(
                    409,
                    "refunds would exceed the captured amount",
                    captured_amount=payment["captured_amount"],
                    refunded_amount=payment["refunded_amount"],
                )
            now = iso(utcnow())
            refund = {
                "channel": code,
                "refund_id": refund_id,
                "payment_id": payment_id,
                "transaction_id": _transaction_id(code, "rf"),
                "amount": amount,
                "created_at": now,
            }
            conn.execute(
                "INSERT INTO refunds (channel, refund_id, payment_id, transaction_id, amount, "
                "created_at) VALUES (:channel, :refund_id, :payment_id, :transaction_id, "
                ":amount, :created_at)",
                refund,
            )
            refunded = payment["refunded_amount"] + amount
            conn.execute(
                "UPDATE payments SET refunded_amount = ?, status = ?, updated_at = ? "
                "WHERE channel = ? AND payment_id = ?",
                (
                    refunded,
                    "refunded" if refunded == payment["captured_amount"] else payment["status"],
                    now,
                    code,
                    payment_id,
                ),
            )
            payment = self._payment(conn, code, payment_id)
            return self._refund_view(refund, payment), payment, True

    @staticmethod
    def _refund_view(refund: dict[str, Any], payment: dict[str, Any]) -> dict[str, Any]:
        return {
            "refund_id": refund["refund_id"],
            "payment_id": refund["payment_id"],
            "channel": refund["channel"],
            "transaction_id": refund["transaction_id"],
            "status": "refunded",
            "amount": refund["amount"],
            "currency": payment["currency"],
            "created_at": refund["created_at"],
        }

    def settlement_rows(self, channel: Channel, day: date) -> list[dict[str, Any]]:
        """Captures and refunds of that UTC day, sorted by payment_id, then type."""
        prefix = day.isoformat()
        with self._lock:
            captures = self._conn.execute(
                "SELECT transaction_id, payment_id, captured_amount AS amount, currency, "
                "captured_at AS settled_at FROM payments "
                "WHERE channel = ? AND substr(captured_at, 1, 10) = ?",
                (channel.code, prefix),
            ).fetchall()
            refunds = self._conn.execute(
                "SELECT r.transaction_id, r.payment_id, r.amount, p.currency, "
                "r.created_at AS settled_at FROM refunds r JOIN payments p "
                "ON p.channel = r.channel AND p.payment_id = r.payment_id "
                "WHERE r.channel = ? AND substr(r.created_at, 1, 10) = ?",
                (channel.code, prefix),
            ).fetchall()
        rows = [
            settlement_row(channel, row, "capture", channel.fee(row["amount"])) for row in captures
        ]
        rows += [settlement_row(channel, row, "refund", 0) for row in refunds]
        rows.sort(
            key=lambda r: (r["payment_id"], r["type"], r["settled_at"], r["channel_transaction_id"])
        )
        return rows


def settlement_row(channel: Channel, row: Any, kind: str, fee: int) -> dict[str, Any]:
    return {
        "channel_transaction_id": row["transaction_id"],
        "payment_id": row["payment_id"],
        "type": kind,
        "amount": row["amount"],
        "currency": row["currency"],
        "status": "settled",
        "settled_at": row["settled_at"],
        "fee": fee,
    }


def apply_anomalies(
    rows: list[dict[str, Any]], anomalies: list[str], channel: Channel, day: date
) -> list[dict[str, Any]]:
    """The settlement rows with the configured anomalies, deterministically. Anomalies pick
    their rows in the order of ANOMALIES, each taking the first row (in file order) that no
    earlier anomaly took: ``missing`` the first such capture row (dropped); ``amount`` (+1),
    ``status`` ("reversed"), ``currency`` (EUR→USD, anything else→EUR) and ``duplicate``
    (repeated right after itself) the first such row of any type. An anomaly with no row left
    is skipped. ``extra`` adds a capture row for payment "bank-only-<day>-1" that the shop
    never sent. The result stays sorted by payment_id, then type."""
    result = [dict(row) for row in rows]
    taken: set[int] = set()
    dropped: set[int] = set()
    doubled: set[int] = set()

    def take(captures_only: bool = False) -> int | None:
        for index, row in enumerate(result):
            if index not in taken and (not captures_only or row["type"] == "capture"):
                taken.add(index)
                return index
        return None

    extra = []
    for anomaly in ANOMALIES:
        if anomaly not in anomalies:
            continue
        if anomaly == "extra":
            payment_id = f"bank-only-{day.isoformat()}-1"
            extra.append(
                {
                    "channel_transaction_id": f"{channel.code}_tx_{payment_id}",
                    "payment_id": payment_id,
                    "type": "capture",
                    "amount": 1000,
                    "currency": "EUR",
                    "status": "settled",
                    "settled_at": iso(datetime(day.year, day.month, day.day, 12, tzinfo=UTC)),
                    "fee": channel.fee(1000),
                }
            )
            continue
        index = take(captures_only=anomaly == "missing")
        if index is None:
            continue
        row = result[index]
        if anomaly == "missing":
            dropped.add(index)
        elif anomaly == "amount":
            row["amount"] += 1
        elif anomaly == "status":
            row["status"] = "reversed"
        elif anomaly == "currency":
            row["currency"] = "USD" if row["currency"] == "EUR" else "EUR"
        elif anomaly == "duplicate":
            doubled.add(index)
    output = []
    for index, row in enumerate(result):
        if index in dropped:
            continue
        output.append(row)
        if index in doubled:
            output.append(dict(row))
    output += extra
    output.sort(key=lambda r: (r["payment_id"], r["type"]))  # stable: duplicates stay adjacent
    return output


def settlement_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SETTLEMENT_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# --- Webhooks -------------------------------------------------------------------------------------


def webhook_signature(secret: str, channel: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed with ``"<secret>-<channel>"`` over
    ``b"<timestamp>." + body``."""
    digest = hmac.new(
        f"{secret}-{channel}".encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    return f"sha256={digest}"


class WebhookSender:
    """Delivers events to ``{base_url}/{channel}/`` from one background thread, in order. A
    delivery is retried (up to len(RETRY_DELAYS) more times) on connection errors and non-2xx
    answers; each attempt is signed afresh with its own timestamp. ``send`` never blocks."""

    RETRY_DELAYS = (0.2, 0.5, 1.0)
    TIMEOUT = 5.0

    def __init__(self, base_url: str, secret: str) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"webhook URL {base_url!r} must be http(s)")
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.delivered = 0
        self.failed = 0
        # Straight to the shop: never through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def url_for(self, channel: str) -> str:
        return f"{self.base_url}/{channel}/"

    def send(self, event: dict[str, Any], copies: int = 1) -> None:
        """Queue ``copies`` deliveries of the same event (same event_id)."""
        body = json.dumps(event).encode()
        for _ in range(copies):
            self._queue.put((event["channel"], body))

    def close(self, timeout: float = 3.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._stopping.set()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            channel, body = item
            if self._deliver(channel, body):
                self.delivered += 1
            else:
                self.failed += 1
                logger.warning("webhook to %s given up: %s", self.url_for(channel), body[:200])

    def _deliver(self, channel: str, body: bytes) -> bool:
        for delay in (0.0, *self.RETRY_DELAYS):
            if delay and self._stopping.wait(delay):
                return False
            timestamp = int(time.time())
            # The scheme was checked (http/https) when the sender was created.
            request = urllib.request.Request(  # noqa: S310
                self.url_for(channel),
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "X-Acquirer-Timestamp": str(timestamp),
                    "X-Acquirer-Signature": webhook_signature(
                        self.secret, channel, timestamp, body
                    ),
                },
            )
            try:
                with self._opener.open(request, timeout=self.TIMEOUT) as answer:
                    if 200 <= answer.status < 300:
                        return True
            except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError: OSError
                logger.info("webhook to %s failed: %s", self.url_for(channel), exc)
        return False


# --- The acquirer ---------------------------------------------------------------------------------


EVENT_TYPES = {
    "authorized": "payment.authorized",
    "declined": "payment.declined",
    "captured": "payment.captured",
    "voided": "payment.voided",
    "refunded": "payment.refunded",
}


class Acquirer:
    """The sandbox's behaviour, independent of HTTP: :meth:`handle` maps a request to a
    :class:`Response`.

    ``faults`` are the channels' initial faults (code → partial fault set). ``seed`` seeds the
    one random generator that decides probabilistic faults (None: random). ``sleep`` is how
    simulated latency and timeouts wait (tests may replace it)."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        webhook_url: str | None = None,
        secret: str = DEFAULT_SECRET,
        faults: dict[str, dict[str, Any]] | None = None,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sleep = sleep
        # Fault injection in a simulator, not cryptography.
        self._rng = random.Random(seed)  # noqa: S311
        self._rng_lock = threading.Lock()
        self._faults = {code: healthy_faults() for code in CHANNELS}
        for code, initial in (faults or {}).items():
            self.set_faults(code, initial)
        self.store = Store(db_path)
        self.webhooks = WebhookSender(webhook_url, secret) if webhook_url else None

    def close(self) -> None:
        if self.webhooks:
            self.webhooks.close()
        self.store.close()

    # Faults and channels

    def set_faults(self, code: str, faults: Any) -> dict[str, Any]:
        """Replace the channel's faults (validated; missing keys healthy) → the channel."""
        self._faults[code] = validate_faults(faults)
        return self.channel_view(CHANNELS[code])

    def faults_of(self, code: str) -> dict[str, Any]:
        faults = self._faults[code]
        return {**faults, "settlement_anomalies": list(faults["settlement_anomalies"])}

    def hours_of(self, channel: Channel) -> str:
        return self._faults[channel.code]["service_hours"] or channel.service_hours

    def channel_view(self, channel: Channel) -> dict[str, Any]:
        """Static fields, current faults, and ``open`` (in service hours now)."""
        return {
            **channel.as_dict(),
            "open": is_open(self.hours_of(channel), utcnow()),
            "faults": self.faults_of(channel.code),
        }

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        if rate >= 1:
            return True
        with self._rng_lock:
            return self._rng.random() < rate

    # Routing

    def handle(self, method: str, target: str, body: bytes) -> Response:
        """Answer one request. Never raises: errors become JSON answers."""
        try:
            return self._route(method, target, body)
        except ApiError as exc:
            return Response.json(exc.status, exc.body)
        except Exception:
            logger.exception("sandbox acquirer failed on %s %s", method, target)
            return Response.json(500, {"error": "internal"})

    def _route(self, method: str, target: str, body: bytes) -> Response:
        raw = urlsplit(target).path
        parts = [unquote(part) for part in raw.strip("/").split("/")] if raw.strip("/") else []
        allowed: tuple[str, ...] = ()
        match parts:
            case ["healthz"]:
                allowed = ("GET",)
                if method == "GET":
                    return Response.json(200, {"status": "ok"})
            case ["channels"]:
                allowed = ("GET",)
                if method == "GET":
                    return Response.json(200, [self.channel_view(c) for c in CHANNELS.values()])
            case ["channels", code]:
                allowed = ("GET",)
                if method == "GET":
                    return Response.json(200, self.channel_view(self._channel(code)))
            case ["channels", code, "faults"]:
                allowed = ("PUT",)
                if method == "PUT":
                    channel = self._channel(code)
                    try:
                        view = self.set_faults(channel.code, self._json(body))
                    except ValueError as exc:
                        raise ApiError(400, str(exc)) from exc
                    return Response.json(200, view)
            case ["channels", code, "payments", "authorize"] if method == "POST":
                return self._authorize(self._channel(code), self._json(body))
            case ["channels", code, "payments", payment_id]:
                allowed = ("GET",)
                if method == "GET":
                    return self._status(self._channel(code), payment_id)
            case ["channels", code, "payments", payment_id, "capture" | "void" | "refund"]:
                allowed = ("POST",)
                if method == "POST":
                    return self._change(self._channel(code), payment_id, parts[4], body)
            case ["settlements", code, filename] if filename.endswith(".csv"):
                allowed = ("GET",)
                if method == "GET":
                    return self._settlement(self._channel(code), filename.removesuffix(".csv"))
            case _:
                raise ApiError(404, "not found")
        raise ApiError(405, f"method not allowed (allowed: {', '.join(allowed)})")

    @staticmethod
    def _channel(code: str) -> Channel:
        try:
            return CHANNELS[code]
        except KeyError:
            raise ApiError(404, f"unknown channel {code!r}") from None

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"malformed JSON: {exc}") from exc

    @staticmethod
    def _object(body: bytes) -> dict[str, Any]:
        data = Acquirer._json(body)
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        return data

    @staticmethod
    def _id(value: Any, name: str) -> str:
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise ApiError(400, f"{name} must be 1-128 URL-safe characters [A-Za-z0-9._:~-]")
        return value

    @staticmethod
    def _amount(value: Any, name: str = "amount") -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ApiError(400, f"{name} must be a positive integer (minor units)")
        return value

    # Payment calls

    def _faulty_call(
        self,
        channel: Channel,
        act: Callable[[bool], tuple[int, Any, list[dict[str, Any]]]],
        *,
        authorize: bool = False,
    ) -> Response:
        """Service hours, then the faults in order around ``act(declined)``, which performs the
        effect and returns (status, answer, events to send)."""
        if not is_open(self.hours_of(channel), utcnow()):
            raise ApiError(503, "closed")
        faults = self.faults_of(channel.code)
        if faults["outage"]:
            raise ApiError(503, "outage")
        self.sleep((channel.latency_ms + faults["latency_ms"]) / 1000)
        if self._chance(faults["error_rate"]):
            raise ApiError(500, "internal")
        if self._chance(faults["timeout_rate"]):
            self.sleep(faults["timeout_ms"] / 1000)
        declined = authorize and self._chance(faults["decline_rate"])
        try:
            status, answer, events = act(declined)
        except ApiError as exc:
            status, answer, events = exc.status, exc.body, []
        for event in events:
            self._emit(event, duplicate=faults["duplicate_webhooks"])
        response = Response.json(status, answer)
        response.lose = self._chance(faults["lose_response_rate"])
        return response

    def _authorize(self, channel: Channel, data: Any) -> Response:
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object")
        payment_id = self._id(data.get("payment_id"), "payment_id")
        amount = self._amount(data.get("amount"))
        currency = data.get("currency", "EUR")
        method = data.get("method", "card")
        if not isinstance(currency, str) or not CURRENCY_PATTERN.fullmatch(currency):
            raise ApiError(400, "currency must be a 3-letter ISO code such as EUR")
        if method not in channel.methods:
            raise ApiError(400, f"method must be one of {', '.join(channel.methods)}")
        if not channel.min_amount <= amount <= channel.max_amount:
            raise ApiError(
                400,
                f"amount must be between {channel.min_amount} and {channel.max_amount}",
            )

        def act(declined: bool) -> tuple[int, Any, list[dict[str, Any]]]:
            payment, created = self.store.authorize(
                channel.code, payment_id, amount, currency, method, declined
            )
            result = "declined" if payment["decline_reason"] else "authorized"
            answer = {
                "payment_id": payment["payment_id"],
                "channel": channel.code,
                "transaction_id": payment["transaction_id"],
                "status": result,
                "amount": payment["amount"],
                "currency": payment["currency"],
                "decline_reason": payment["decline_reason"],
            }
            events = [self._event(result, payment, payment["amount"])] if created else []
            return 200, answer, events

        return self._faulty_call(channel, act, authorize=True)

    def _change(self, channel: Channel, payment_id: str, action: str, body: bytes) -> Response:
        data = self._object(body)
        if action == "capture":
            amount = data.get("amount")
            if amount is not None:
                self._amount(amount)

            def act(_: bool) -> tuple[int, Any, list[dict[str, Any]]]:
                payment, changed = self.store.capture(channel.code, payment_id, amount)
                events = [self._event("captured", payment, payment["captured_amount"])]
                return 200, self._payment_view(payment), events if changed else []

        elif action == "void":

            def act(_: bool) -> tuple[int, Any, list[dict[str, Any]]]:
                payment, changed = self.store.void(channel.code, payment_id)
                events = [self._event("voided", payment, payment["amount"])]
                return 200, self._payment_view(payment), events if changed else []

        else:
            refund_id = self._id(data.get("refund_id"), "refund_id")
            amount = self._amount(data.get("amount"))

            def act(_: bool) -> tuple[int, Any, list[dict[str, Any]]]:
                refund, payment, changed = self.store.refund(
                    channel.code, payment_id, refund_id, amount
                )
                event = self._event("refunded", payment, amount, refund_id=refund_id)
                return 200, refund, [event] if changed else []

        return self._faulty_call(channel, act)

    def _status(self, channel: Channel, payment_id: str) -> Response:
        faults = self.faults_of(channel.code)
        if faults["outage"]:
            raise ApiError(503, "outage")
        self.sleep((channel.latency_ms + faults["latency_ms"]) / 1000)
        payment = self.store.get(channel.code, payment_id)
        if not payment:
            return Response.json(404, {"status": "not_found"})
        return Response.json(200, self._payment_view(payment))

    @staticmethod
    def _payment_view(payment: dict[str, Any]) -> dict[str, Any]:
        return dict(payment)

    def _event(
        self, kind: str, payment: dict[str, Any], amount: int, refund_id: str | None = None
    ) -> dict[str, Any]:
        return {
            "event_id": str(uuid.uuid4()),
            "type": EVENT_TYPES[kind],
            "channel": payment["channel"],
            "payment_id": payment["payment_id"],
            "refund_id": refund_id,
            "status": kind,
            "amount": amount,
            "currency": payment["currency"],
            "occurred_at": payment["updated_at"],
        }

    def _emit(self, event: dict[str, Any], duplicate: bool) -> None:
        if self.webhooks:
            self.webhooks.send(event, copies=2 if duplicate else 1)

    # Settlement

    def _settlement(self, channel: Channel, day_text: str) -> Response:
        try:
            if not DATE_PATTERN.fullmatch(day_text):
                raise ValueError(day_text)
            day = date.fromisoformat(day_text)
        except ValueError:
            raise ApiError(400, f"{day_text!r} is not a date like 2025-01-31") from None
        rows = self.store.settlement_rows(channel, day)
        rows = apply_anomalies(
            rows, self.faults_of(channel.code)["settlement_anomalies"], channel, day
        )
        return Response(200, settlement_csv(rows).encode(), content_type="text/csv; charset=utf-8")


# --- HTTP -----------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "SandboxAcquirer/1.0"
    timeout = 120  # idle keep-alive connections give their thread back after this
    server: AcquirerServer

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            response = Response.json(400, {"error": "bad Content-Length"})
        else:
            body = self.rfile.read(length) if length else b""
            response = self.server.acquirer.handle(self.command, self.path, body)
        if response.lose:
            # Nothing is written: the client sees the connection close without an answer.
            self.close_connection = True
            self.log_message('"%s" lost response (%d)', self.requestline, response.status)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. after a simulated timeout)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, fmt: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(fmt, *args)


class AcquirerServer(ThreadingHTTPServer):
    """A threading HTTP server (one thread per connection) around an :class:`Acquirer`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], acquirer: Acquirer, *, quiet: bool = False
    ) -> None:
        self.acquirer = acquirer
        self.quiet = quiet
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    db_path: str | os.PathLike[str] = DEFAULT_DB,
    *,
    webhook_url: str | None = None,
    secret: str = DEFAULT_SECRET,
    faults: dict[str, dict[str, Any]] | None = None,
    seed: int | None = None,
    quiet: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (when called from the main thread) or until the server is
    shut down. ``port`` 0 picks a free port. ``on_ready(url)`` is called once listening (by
    default a line ``LISTENING`` is printed to stdout). Returns after a clean stop: queued
    webhooks get a few seconds to go out, the database is closed."""
    acquirer = Acquirer(
        db_path, webhook_url=webhook_url, secret=secret, faults=faults or {}, seed=seed
    )
    try:
        server = AcquirerServer((host, port), acquirer, quiet=quiet)
    except BaseException:
        acquirer.close()
        raise
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def stop(signum: int, frame: Any) -> None:
            threading.Thread(target=server.shutdown, daemon=True).start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, stop)
    try:
        if on_ready:
            on_ready(server.url)
        else:
            print(LISTENING.format(url=server.url), flush=True)
        server.serve_forever(poll_interval=0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.server_close()
        acquirer.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m apps.payments.sandbox.acquirer``: the same options as the management
    command, without Django."""
    parser = argparse.ArgumentParser(description="Run the sandbox acquirer.")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("ACQUIRER_PORT") or DEFAULT_PORT)
    )
    parser.add_argument("--db", default=str(DEFAULT_DB))
    parser.add_argument("--webhook-url", default=os.environ.get("SHOP_WEBHOOK_URL") or None)
    parser.add_argument(
        "--secret", default=os.environ.get("ACQUIRER_WEBHOOK_SECRET") or DEFAULT_SECRET
    )
    parser.add_argument("--faults", default=None, help='JSON {"alpha": {"decline_rate": 0.2}}')
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    options = parser.parse_args(argv)
    try:
        faults = parse_faults_option(options.faults)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING if options.quiet else logging.INFO)
    serve(
        options.host,
        options.port,
        options.db,
        webhook_url=options.webhook_url or None,
        secret=options.secret,
        faults=faults,
        seed=options.seed,
        quiet=options.quiet,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
