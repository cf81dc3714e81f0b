"""Payments benchmark (issue: payments).

Under gunicorn (the shop's worker model from config/gunicorn.py: gthread, WEB_CONCURRENCY
processes x WEB_THREADS threads; services profile, outbox publishing to RabbitMQ on, the sandbox
acquirer as a separate process): payments/s and p50/p99 of
``POST /api/v1/orders/{id}/payments/`` (a fresh Idempotency-Key each time, the order's owner's
token) for

* wallet payments (``{"method": "wallet"}``): the TCC coordinator with the order branch on the
  buyer's shard and the wallet branch on ``default`` (freeze and capture to the merchant in one
  transaction with the decision; docs/payments.md has the layout);
* card payments (``{"method": "card"}``): routed to the sandbox acquirer's best channel (alpha,
  which simulates 40 ms per call; a payment makes an authorize and a capture call, so at least
  80 ms of every card payment is the simulated bank -- reported, not subtracted).

An order can be paid once, so every request pays its own unpaid order: orders are placed before
the timed runs (``order_place`` in a few parallel ``manage.py shell`` processes; separate pools
for the warm-ups and the timed runs, sized for ``--wallet-rate`` / ``--card-rate`` payments per
second) and every buyer's wallet is topped up (``wallet_topup``) for its orders. The Lua
``response()`` hook counts each answer's payment ``status`` (and channel); afterwards the
payments in the database are counted too.

Baselines, measured in the same run on the same PostgreSQL with the same concurrency (threads,
one psycopg connection per database each):

(a) plain wallet debit -- the cheapest correct way to take money from a wallet: one transaction
    on ``default`` doing the conditional ``UPDATE payments_account SET available = available -
    amount ... WHERE key = ... AND available >= amount`` on a random one of 400 bench wallets,
    the INSERT of a ``payments_transfer`` row and of its two ``payments_entry`` rows, and the
    credit of one bench merchant account (like ``merchant:EUR``, one hot row for everyone), so
    the ledger stays balanced and ``audit_invariants`` holds. The bench wallets and the bench
    merchant account (``bench-wallet:<i>:EUR``, ``bench-merchant:EUR``) are the baseline's own.
(b) the same plus, in a second transaction on the order's shard, the conditional UPDATE of one
    pending order row (``updated_at`` only, so the order stays consistent): the cross-database
    part of a payment without any coordination between the two.

And the in-process cost without HTTP: ``payment_pay`` called directly, one payment after the
other in one process (``manage.py shell``), for wallet and card payments: ms per payment, SQL
statements per payment on each database (``execute_wrapper`` on every alias) and the
transactions they run in, and the time in SQL, Redis, the acquirer and the broker -- where the
time of one payment goes.

And for card payments, the bank's own rate: (c) the sandbox acquirer driven directly by the
same number of client threads, each making the two calls of a card payment (authorize, then
capture, on channel alpha, a new payment id each) on one keep-alive connection -- what the
acquirer sustains at this concurrency with no shop in between. The card payment's ratio to it
says whether the bank (ratio near 1) or the shop's web workers are the limit.

    python bench/payments.py [--seconds 15] [--connections 8] [--only card|wallet]
                             [--threads N] [--worker-class sync] [--compare-sync]

``--only`` runs one method's scenarios and their baselines; ``--threads`` and
``--worker-class`` override the shop's worker model (e.g. ``--worker-class sync --threads 1``
for the model before gthread); ``--compare-sync`` also loads card payments under that old model
(2 sync workers) in the same run, on an order pool of its own.

``audit_invariants`` runs at the end and must hold. Unpaid leftover orders stay pending (their
stock held) until they expire, as in the checkout benchmark.

Needs the local PostgreSQL, Redis and RabbitMQ of the services profile, and wrk (falls back to
a slower Python load generator when wrk is not installed).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import random
import shlex
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LUA_STATUS_DONE,
    PASSWORD,
    ROOT,
    WARMUP_SECONDS,
    LoadResult,
    audit,
    bench_env,
    connect_all,
    databases_vacuumed,
    gunicorn,
    load,
    lua_list,
    manage,
    manage_parallel,
    print_table,
    save,
    shell_json,
    summary_row,
    summary_rows,
    threaded_load,
    web_model,
)

ORDER_SKUS = 100  # the pre-placed orders are spread over this many SKUs (one line each)
SKU_UNITS = 1_000_000  # per SKU: far more than a run can sell
RAW_WALLETS = 400  # the baseline's own wallets (as many as there are buyers)
RAW_AMOUNT = 100  # minor units per baseline debit
RAW_MAX_RATE = 4000  # baseline debits/s the bench wallets are funded for (both variants)
RAW_ORDERS = 200  # pending orders whose rows baseline (b) updates
IN_PROCESS_BUYERS = 8
METHODS = ("wallet", "card")
PAYMENTS_API = "/api/v1/orders/{order_id}/payments/"
# wrk's timeout for a payment answer: slower ones count as errors and leave the latencies, and
# a payment under load can take longer than wrk's default 2 s (the bank alone is 80 ms+).
HTTP_TIMEOUT = 10


def _shell(function: str, *args: object) -> str:
    """A ``manage.py shell -c`` command calling one of this module's shop-side functions (for
    manage_parallel; one call at a time goes through shell_json)."""
    call = ", ".join(repr(arg) for arg in args)
    return f"from bench.payments import {function}; {function}({call})"


def _chunks(values: list, size: int) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


# --- Shop side: these functions run inside `manage.py shell` on the bench env ----------------


def shell_prepare(spec_text: str) -> None:
    """SKUs with plenty of stock, buyers with tokens and money for their orders, the sandbox
    channels, and the raw baseline's accounts (funded through the ledger). Prints JSON."""
    from apps.catalog.models import Sku
    from apps.catalog.selectors import skus_for_checkout
    from apps.payments.models import Account
    from apps.payments.services import wallet_topup
    from apps.payments.services.channels import channels_ensure_sandbox
    from apps.payments.services.ledger import AVAILABLE, Leg, funding_account, ledger_post
    from bench.common import shop_buyers, shop_databases, shop_stock_at_least

    spec = json.loads(spec_text)
    run = spec["run"]
    channels = channels_ensure_sandbox()
    codes = Sku.objects.filter(code__startswith="DEMO-").values_list("code", flat=True)
    candidates = sorted(
        (
            sku
            for sku in skus_for_checkout(codes).values()
            # any channel takes it (gamma: 100 .. 1,000,000) and no per-buyer limit applies
            if sku.sellable and sku.per_user_limit is None and 100 <= sku.price <= 1_000_000
        ),
        key=lambda sku: sku.id,
    )
    if len(candidates) < ORDER_SKUS:
        raise SystemExit(f"only {len(candidates)} usable demo SKUs, need {ORDER_SKUS}")
    skus = candidates[-ORDER_SKUS:]  # the far end: bench/checkout.py takes the first ones
    topped_up = shop_stock_at_least(skus, floor=SKU_UNITS // 2, target=SKU_UNITS)

    buyers = shop_buyers(spec["users"])
    top_up = spec["wallet_orders_per_buyer"] * max(sku.price for sku in skus)
    for buyer in buyers:
        wallet_topup(user_id=buyer["id"], amount=top_up, currency="EUR",
                     reference=f"bench-topup:{buyer['id']}:{run}", actor="bench")  # fmt: skip

    merchant, _ = Account.objects.get_or_create(
        key="bench-merchant:EUR",
        defaults={"kind": Account.Kind.MERCHANT, "currency": "EUR", "allow_negative": True},
    )
    funding = funding_account(currency="EUR")
    wallets, funded = [], 0
    for i in range(RAW_WALLETS):
        wallet, _ = Account.objects.get_or_create(
            key=f"bench-wallet:{i}:EUR", defaults={"kind": Account.Kind.WALLET, "currency": "EUR"}
        )
        if wallet.available < spec["raw_need"]:
            ledger_post(
                kind="topup",
                reference=f"bench-raw-topup:{i}:{run}",
                legs=[
                    Leg(funding, AVAILABLE, -2 * spec["raw_need"]),
                    Leg(wallet, AVAILABLE, 2 * spec["raw_need"]),
                ],
                memo="bench/payments.py baseline wallet",
                actor="bench",
            )
            funded += 1
        wallets.append({"id": wallet.id, "key": wallet.key})
    print(
        json.dumps(
            {
                "skus": [{"code": s.code, "price": s.price} for s in skus],
                "buyers": buyers,
                "databases": shop_databases(),
                "merchant": {"id": merchant.id, "key": merchant.key},
                "wallets": wallets,
                "channels": channels,
                "sku_topped_up": topped_up,
                "raw_funded": funded,
                "wallet_top_up": top_up,
            }
        )
    )


def shell_place_orders(in_path: str, out_path: str) -> None:
    """Place one order (one line, quantity 1) per ``[index, user_id, sku_code]`` of the input
    file; write ``[index, order_id, total]`` rows to the output file."""
    from apps.orders.services import order_place

    rows = []
    for index, user_id, code in json.loads(Path(in_path).read_text()):
        order = order_place(user_id=user_id, items=[{"sku": code, "quantity": 1}])
        rows.append([index, str(order.id), order.total])
    Path(out_path).write_text(json.dumps(rows))


class _Probe:
    """Counts and times what one process does: SQL statements and transactions per database
    alias, statements by kind, Redis round trips, acquirer calls and broker publishes."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts: dict[str, int] = {}
        self.ms: dict[str, float] = {}

    def add(self, key: str, started: float) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        self.ms[key] = self.ms.get(key, 0.0) + (time.perf_counter() - started) * 1000

    def sql_wrapper(self, alias: str) -> Callable:
        def wrapper(execute, sql, params, many, context):
            alone = not context["connection"].in_atomic_block  # autocommit: its own transaction
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                self.add(f"sql {alias}", started)
                self.add(f"kind {sql.split(None, 1)[0].upper()}", started)
                if alone:
                    self.counts[f"tx {alias}"] = self.counts.get(f"tx {alias}", 0) + 1

        return wrapper

    def commits(self, alias: str, commit: Callable) -> Callable:
        """Wraps a connection's ``commit`` (an outermost ``atomic`` block ending)."""

        def wrapper() -> None:
            self.counts[f"tx {alias}"] = self.counts.get(f"tx {alias}", 0) + 1
            return commit()

        return wrapper

    def timed(self, key: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(key, started)

        return wrapper

    def summary(self, payments: int, seconds: float) -> dict:
        per = {key: count / payments for key, count in self.counts.items()}
        ms = {key: total / payments for key, total in self.ms.items()}
        sql_keys = [key for key in per if key.startswith("sql ")]
        other = sum(ms.get(key, 0.0) for key in ("redis", "acquirer", "broker"))
        total_ms = seconds * 1000 / payments
        return {
            "payments": payments,
            "ms_per_payment": total_ms,
            "statements_per_payment": {key[4:]: per[key] for key in sql_keys},
            "transactions_per_payment": {k[3:]: v for k, v in per.items() if k.startswith("tx ")},
            "statements_by_kind": {k[5:]: v for k, v in per.items() if k.startswith("kind ")},
            "sql_ms": sum(ms[key] for key in sql_keys),
            "redis_calls": per.get("redis", 0.0),
            "redis_ms": ms.get("redis", 0.0),
            "acquirer_calls": per.get("acquirer", 0.0),
            "acquirer_ms": ms.get("acquirer", 0.0),
            "broker_publishes": per.get("broker", 0.0),
            "broker_ms": ms.get("broker", 0.0),
            "rest_ms": total_ms - sum(ms[key] for key in sql_keys) - other,
        }


def shell_in_process(spec_text: str) -> None:
    """``payment_pay`` called directly, one payment at a time, for wallet then card payments
    (after a few unmeasured ones of each), with every SQL statement, Redis round trip,
    acquirer call and broker publish counted and timed. Prints JSON."""
    import contextlib

    import kombu.messaging
    import redis.client
    from django.conf import settings
    from django.db import connections

    from apps.orders.services import order_place
    from apps.payments.services import channels, payment_pay, wallet_topup

    spec = json.loads(spec_text)
    warm = spec["warm"]
    counts = {method: spec[method] for method in ("wallet", "card") if spec.get(method)}
    buyers, codes = spec["buyers"], spec["codes"]
    rng = random.Random(7)
    started = time.perf_counter()
    orders: dict[str, list] = {}
    for method, count in counts.items():
        orders[method] = [
            order_place(
                user_id=buyers[i % len(buyers)], items=[{"sku": rng.choice(codes), "quantity": 1}]
            )
            for i in range(warm + count)
        ]
    needed: dict[int, int] = {}
    for order in orders.get("wallet", []):
        needed[order.user_id] = needed.get(order.user_id, 0) + order.total
    for user_id, amount in needed.items():
        wallet_topup(
            user_id=user_id,
            amount=amount,
            currency="EUR",
            reference=f"bench-topup:{user_id}:{spec['run']}:in-process",
            actor="bench",
        )
    placed_seconds = time.perf_counter() - started

    probe = _Probe()
    patches = [
        (redis.client.Redis, "execute_command", "redis"),
        (redis.client.Pipeline, "execute", "redis"),
        (channels, "http_json", "acquirer"),
        (kombu.messaging.Producer, "publish", "broker"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, key in patches:
        setattr(owner, name, probe.timed(key, getattr(owner, name)))
    for alias in settings.DATABASES:  # instance attributes: removed again below
        connections[alias].commit = probe.commits(alias, connections[alias].commit)
    results, statuses = {}, {}
    try:
        with contextlib.ExitStack() as stack:
            for alias in settings.DATABASES:
                stack.enter_context(connections[alias].execute_wrapper(probe.sql_wrapper(alias)))
            for method, count in counts.items():
                seen: dict[str, int] = {}
                for i, order in enumerate(orders[method]):
                    if i == warm:
                        probe.reset()
                        began = time.perf_counter()
                    payment = payment_pay(order_id=order.id, user_id=order.user_id, method=method)
                    if i >= warm:
                        label = payment.status + (f" via {payment.channel}" if method == "card"
                                                  else "")  # fmt: skip
                        seen[label] = seen.get(label, 0) + 1
                results[method] = probe.summary(count, time.perf_counter() - began)
                statuses[method] = seen
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        for alias in settings.DATABASES:
            del connections[alias].commit
    print(json.dumps({"results": results, "statuses": statuses, "placed_s": placed_seconds}))


def shell_verify(in_path: str) -> None:
    """What the database says about each pool's orders: payments by status and channel, the
    TCC transactions' states and the recorded acquirer latency. Prints JSON."""
    from django.db.models import Count

    from apps.payments.models import Payment, PaymentAttempt, TccTransaction
    from shop.sharding import shard_for_id

    report = {}
    for pool, ids in json.loads(Path(in_path).read_text()).items():
        by_alias: dict[str, list[int]] = {}
        for order_id in map(int, ids):
            by_alias.setdefault(shard_for_id(order_id), []).append(order_id)
        payments, attempts, payment_ids = {}, [], []
        for alias, order_ids in by_alias.items():
            for chunk in _chunks(order_ids, 1000):
                rows = (
                    Payment.objects.using(alias)
                    .filter(order_id__in=chunk)
                    .values("status", "channel", "failure_code")
                    .annotate(n=Count("id"))
                )
                for row in rows:
                    label = " ".join(v for v in (row["status"], row["channel"],
                                                 row["failure_code"]) if v)  # fmt: skip
                    payments[label] = payments.get(label, 0) + row["n"]
                ids_here = list(
                    Payment.objects.using(alias)
                    .filter(order_id__in=chunk)
                    .values_list("id", flat=True)
                )
                payment_ids += ids_here
                attempts += list(
                    PaymentAttempt.objects.using(alias)
                    .filter(payment_id__in=ids_here)
                    .values_list("latency_ms", flat=True)
                )
        tcc: dict[str, int] = {}
        for chunk in _chunks(payment_ids, 1000):
            for status, n in (
                TccTransaction.objects.filter(payment_id__in=chunk)
                .values("status")
                .annotate(n=Count("id"))
                .values_list("status", "n")
            ):
                tcc[status] = tcc.get(status, 0) + n
        attempts.sort()
        report[pool] = {
            "orders": len(ids),
            "payments": payments,
            "tcc": tcc,
            "attempts": len(attempts),
            "attempt_ms_p50": attempts[len(attempts) // 2] if attempts else None,
            "attempt_ms_mean": sum(attempts) / len(attempts) if attempts else None,
        }
    print(json.dumps(report))


# --- Preparation (bench side) ----------------------------------------------------------------


def place_orders(
    env: dict[str, str], pools: dict[str, int], data: dict, *, processes: int, seed: int
) -> tuple[dict[str, list[dict]], float]:
    """Place ``pools[name]`` orders per pool in ``processes`` parallel shell processes,
    round-robin over the buyers, one random SKU each. Returns the orders by pool and the time
    it took."""
    rng = random.Random(seed)
    buyers, codes = data["buyers"], [sku["code"] for sku in data["skus"]]
    todo, owners = [], []
    for pool, count in pools.items():
        for _ in range(count):
            buyer = buyers[len(todo) % len(buyers)]
            todo.append([len(todo), buyer["id"], rng.choice(codes)])
            owners.append((pool, buyer))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-payments-orders-") as tmp:
        commands, outputs = [], []
        for part in range(processes):
            source, target = Path(tmp) / f"in-{part}.json", Path(tmp) / f"out-{part}.json"
            source.write_text(json.dumps(todo[part::processes]))
            commands.append(["shell", "-c", _shell("shell_place_orders", str(source), str(target))])
            outputs.append(target)
        manage_parallel(commands, env=env)
        placed = [row for path in outputs for row in json.loads(path.read_text())]
    took = time.monotonic() - began
    orders: dict[str, list[dict]] = {pool: [] for pool in pools}
    for index, order_id, total in sorted(placed):
        pool, buyer = owners[index]
        orders[pool].append({"id": order_id, "total": total, "user": buyer["id"],
                             "alias": buyer["alias"], "token": buyer["token"]})  # fmt: skip
    return orders, took


# --- Raw baselines: the plain wallet debit through psycopg ----------------------------------

DEBIT = (
    "UPDATE payments_account SET available = available - %s, updated_at = now()"
    " WHERE key = %s AND available >= %s"
)
INSERT_TRANSFER = (
    "INSERT INTO payments_transfer (kind, reference, memo, actor, created_at)"
    " VALUES ('bench_debit', %s, '', 'bench', now()) RETURNING id"
)
INSERT_ENTRIES = (
    "INSERT INTO payments_entry (transfer_id, account_id, bucket, amount)"
    " VALUES (%s, %s, 'available', %s), (%s, %s, 'available', %s)"
)
CREDIT = "UPDATE payments_account SET available = available + %s, updated_at = now() WHERE id = %s"
TOUCH_ORDER = (
    "UPDATE orders_order SET updated_at = now()"
    " WHERE id = %s AND user_id = %s AND status = 'pending_payment'"
)


class Insufficient(Exception):
    pass


def _raw_worker(data: dict, orders: list[dict] | None, run: str, index: int):
    """One baseline thread: a wallet debit per step, then (``orders`` given) the UPDATE of a
    random pending order row on its shard, in a second transaction."""
    rng = random.Random(index)
    conns = connect_all(data["databases"])
    default, merchant = conns["default"], data["merchant"]["id"]
    counter = itertools.count()
    variant = "b" if orders else "a"

    def step() -> str:
        wallet = rng.choice(data["wallets"])
        reference = f"{run}:{variant}:{index}:{next(counter)}"
        try:
            with default.transaction():
                if default.execute(DEBIT, [RAW_AMOUNT, wallet["key"], RAW_AMOUNT]).rowcount != 1:
                    raise Insufficient
                transfer = default.execute(INSERT_TRANSFER, [reference]).fetchone()[0]
                default.execute(
                    INSERT_ENTRIES,
                    [transfer, wallet["id"], -RAW_AMOUNT, transfer, merchant, RAW_AMOUNT],
                )
                default.execute(CREDIT, [RAW_AMOUNT, merchant])
            if orders:
                order = rng.choice(orders)
                shard = conns[order["alias"]]
                if shard.execute(TOUCH_ORDER, [int(order["id"]), order["user"]]).rowcount != 1:
                    return "order not pending"
        except Insufficient:
            return "insufficient_funds"
        except psycopg.Error as exc:
            return f"error {type(exc).__name__}"
        return "ok"

    def close() -> None:
        for conn in conns.values():
            conn.close()

    return step, close


def raw_scenario(
    name: str, data: dict, orders: list[dict] | None, run: str, *, seconds: int, connections: int
) -> LoadResult:
    return threaded_load(
        name,
        "postgresql (psycopg)",
        lambda index: _raw_worker(data, orders, run, index),
        seconds=seconds,
        connections=connections,
    )


# --- Direct acquirer baseline: the bank's own rate for authorize + capture -------------------

DIRECT_CHANNEL = "alpha"  # the channel the shop routes card payments to (the fastest)
DIRECT_AMOUNT = 1000  # minor units: within every channel's limits


def _direct_worker(acquirer: str, run: str, index: int):
    """One baseline thread: the two calls a card payment makes at the bank (authorize, then
    capture, each keyed by a new payment id), sent straight to the sandbox acquirer on one
    keep-alive connection, as the shop's channel client does."""
    parts = urlsplit(acquirer)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    counter = itertools.count()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    base = f"/channels/{DIRECT_CHANNEL}/payments"

    def call(path: str, body: dict) -> tuple[int, dict]:
        connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read() or b"{}")
        return response.status, answer if isinstance(answer, dict) else {}

    def step() -> str:
        payment_id = f"bench-direct-{run}-{index}-{next(counter)}"
        try:
            status, answer = call(
                f"{base}/authorize",
                {"payment_id": payment_id, "amount": DIRECT_AMOUNT, "currency": "EUR",
                 "method": "card"},
            )  # fmt: skip
            if status != 200 or answer.get("status") != "authorized":
                return f"authorize {status} {answer.get('status') or answer.get('error')}"
            status, answer = call(f"{base}/{payment_id}/capture", {})
            if status != 200 or answer.get("status") != "captured":
                return f"capture {status} {answer.get('status') or answer.get('error')}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            connection.close()  # the next request reconnects
            return f"error {type(exc).__name__}"
        return "ok"

    return step, connection.close


def direct_scenario(acquirer: str, run: str, *, seconds: int, connections: int) -> LoadResult:
    return threaded_load(
        "acquirer direct: authorize + capture",
        acquirer,
        lambda index: _direct_worker(acquirer, run, index),
        seconds=seconds,
        connections=connections,
        tool="http.client",
    )


# --- HTTP payments: wrk script and its Python twin --------------------------------------------

LUA = (
    """-- generated by bench/payments.py: each request pays the next pre-placed order (once)
-- (one wrk thread, as bench/common.py runs it: the orders are not split between threads;
-- wrk calls request() once to check the script, so the first order is never sent)
local tokens = {tokens}
local orders = {orders}
local owners = {owners}
local body = '{{"method":"{method}"}}'
local threads = {{}}
local counter = 0
local prefix = ""
statuses = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  local urandom = assert(io.open("/dev/urandom", "rb"))
  local bytes = urandom:read(8)
  urandom:close()
  for i = 1, #bytes do
    prefix = prefix .. string.format("%02x", bytes:byte(i))
  end
  prefix = prefix .. "-" .. thread_id
end

function request()
  counter = counter + 1
  -- Past the end of the pool the last order is paid again: 409s, and a warning afterwards.
  local i = math.min(counter, #orders)
  local headers = {{
    ["Authorization"] = "Token " .. tokens[owners[i]],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = string.format("bench-pay-%s-%d", prefix, counter),
  }}
  return wrk.format("POST", "/api/v1/orders/" .. orders[i] .. "/payments/", headers, body)
end

function response(status, headers, body)
  local label = tostring(status)
  if headers["Idempotent-Replayed"] then label = label .. " replayed" end
  if status == 201 then
    -- the payment's own fields come first in the body (its attempts follow)
    label = label .. " " .. (body:match('"status"%s*:%s*"([^"]*)"') or "?")
    local channel = body:match('"channel"%s*:%s*"([^"]*)"')
    if channel and channel ~= "" then label = label .. " via " .. channel end
  else
    local code = body and body:match('"code"%s*:%s*"([^"]+)"')
    if code then label = label .. " " .. code end
  end
  statuses[label] = (statuses[label] or 0) + 1
end

"""
    + LUA_STATUS_DONE
)  # no braces: .format() leaves it be


def lua_script(directory: Path, name: str, method: str, orders: list[dict]) -> Path:
    tokens = sorted({order["token"] for order in orders})
    position = {token: i + 1 for i, token in enumerate(tokens)}  # Lua lists start at 1
    path = directory / f"{name}.lua"
    path.write_text(
        LUA.format(
            tokens=lua_list(tokens),
            orders=lua_list([order["id"] for order in orders]),  # strings: ids exceed 2^53
            owners="{" + ", ".join(str(position[order["token"]]) for order in orders) + "}",
            method=method,
        )
    )
    return path


def request_factory(base: str, method: str, orders: Iterator[dict]):
    """The Python fallback's version of the wrk script (warm-up and run share one pool)."""
    lock = threading.Lock()
    body = json.dumps({"method": method}).encode()

    def make() -> urllib.request.Request:
        with lock:
            order = next(orders)
        return urllib.request.Request(
            base + PAYMENTS_API.format(order_id=order["id"]),
            data=body,
            method="POST",
            headers={
                "Authorization": f"Token {order['token']}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"bench-pay-{uuid.uuid4()}",
            },
        )

    return make


def payment_label(status: int, body: bytes, headers: Mapping[str, str] | None) -> str:
    """The fallback's twin of the Lua ``response()`` hook."""
    if headers is not None and headers.get("Idempotent-Replayed"):
        return f"{status} replayed"
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    answer = answer if isinstance(answer, dict) else {}
    if status == 201:
        channel = answer.get("channel")
        return f"201 {answer.get('status', '?')}" + (f" via {channel}" if channel else "")
    return f"{status} {answer['code']}" if answer.get("code") else str(status)


def _fresh_orders(pools: dict[str, list[dict]], *names: str) -> Iterator[dict]:
    """The fallback's pool: the warm-up's orders, then the timed run's, then (exhausted) the
    last one again."""
    orders = [order for name in names for order in pools[name]]
    return itertools.chain(orders, itertools.repeat(orders[-1]))


# --- Report -------------------------------------------------------------------------------------


def _not_succeeded(result: LoadResult) -> int:
    return sum(n for label, n in result.statuses.items() if not label.startswith("201 succeeded"))


def _print_in_process(in_process: dict) -> None:
    print("\nin-process payment_pay (one process, one payment at a time, no HTTP):")
    for method, r in in_process["results"].items():
        sql = ", ".join(f"{alias} {n:.1f}" for alias, n in r["statements_per_payment"].items())
        kinds = ", ".join(
            f"{kind} {n:.1f}"
            for kind, n in sorted(r["statements_by_kind"].items(), key=lambda kv: -kv[1])
        )
        tx = ", ".join(f"{alias} {n:.1f}" for alias, n in r["transactions_per_payment"].items())
        print(
            f"  {method:<6} {r['ms_per_payment']:6.1f} ms/payment over {r['payments']} payments;"
            f" {sum(r['statements_per_payment'].values()):.0f} SQL statements ({sql})"
        )
        print(
            f"         in {sum(r['transactions_per_payment'].values()):.0f} transactions ({tx});"
            f" statements by kind: {kinds}"
        )
        print(
            f"         time per payment: SQL {r['sql_ms']:.1f} ms, Redis {r['redis_ms']:.1f} ms"
            f" ({r['redis_calls']:.1f} round trips), acquirer {r['acquirer_ms']:.1f} ms"
            f" ({r['acquirer_calls']:.1f} calls), broker {r['broker_ms']:.1f} ms"
            f" ({r['broker_publishes']:.1f} publishes), Python/Django/other {r['rest_ms']:.1f} ms"
        )
        print(f"         outcomes: {json.dumps(in_process['statuses'][method], sort_keys=True)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument(
        "--wallet-rate", type=int, default=400, help="wallet payments/s the orders are sized for"
    )
    parser.add_argument(
        "--card-rate", type=int, default=150, help="card payments/s the orders are sized for"
    )
    parser.add_argument(
        "--order-processes", type=int, default=4, help="parallel processes placing the orders"
    )
    parser.add_argument(
        "--in-process", type=int, default=300, help="in-process wallet payments (card: a fifth)"
    )
    parser.add_argument(
        "--only", choices=METHODS, help="run only this method's scenarios and their baselines"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="gunicorn threads per process (default: the shop's, config/gunicorn.py)",
    )  # fmt: skip
    parser.add_argument(
        "--worker-class", default=None,
        help="gunicorn worker class (default: the shop's, gthread; 'sync' for the old model)",
    )  # fmt: skip
    parser.add_argument(
        "--compare-sync", action="store_true",
        help="card payments also under the model before gthread (2 sync workers), same run",
    )  # fmt: skip
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    began = time.monotonic()
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]

    from tests.payments.acquirer_process import SandboxAcquirer

    with tempfile.TemporaryDirectory(prefix="bench-payments-") as tmp:
        acquirer = SandboxAcquirer(seed=1, db_path=Path(tmp) / "acquirer.sqlite3").start()
        try:
            report = _run(args, command, run, Path(tmp), acquirer.url, began)
        finally:
            acquirer.close()
    held = audit(report["env"])
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if not held:
        raise SystemExit(1)


def _run(
    args: argparse.Namespace, command: str, run: str, tmp: Path, acquirer: str, began: float
) -> dict:
    env = bench_env(ACQUIRER_URL=acquirer)
    print(f"sandbox acquirer at {acquirer} (alpha 40 ms, beta 120 ms, gamma 250 ms per call)")
    print("preparing: migrate, seed, stock, wallets, tokens ...", flush=True)
    manage("migrate_all", env=env)
    print(
        manage(
            "seed_demo", "--products", str(args.products), "--users", str(args.users),
            "--password", PASSWORD, env=env,
        ).strip().splitlines()[0]
    )  # fmt: skip
    methods = [method for method in METHODS if args.only in (None, method)]
    window = args.seconds + WARMUP_SECONDS
    rates = {"wallet": args.wallet_rate, "card": args.card_rate}
    pools = {}
    for method in methods:
        pools[f"{method}_warm"] = rates[method] * WARMUP_SECONDS
        pools[method] = rates[method] * args.seconds
    if "wallet" in methods:
        pools["raw"] = RAW_ORDERS
    compare_sync = args.compare_sync and "card" in methods
    if compare_sync:
        pools["card_sync_warm"] = args.card_rate * WARMUP_SECONDS
        pools["card_sync"] = args.card_rate * args.seconds
    wallet_orders = pools.get("wallet_warm", 0) + pools.get("wallet", 0)
    spec = {
        "run": run,
        "users": args.users,
        "wallet_orders_per_buyer": math.ceil(wallet_orders / args.users) + 1,
        "raw_need": math.ceil(RAW_MAX_RATE * window * 2 / RAW_WALLETS) * RAW_AMOUNT,
    }
    data = shell_json("bench.payments", "shell_prepare", json.dumps(spec), env=env)
    print(
        f"  {len(data['buyers'])} buyers with tokens, each topped up by {data['wallet_top_up']}"
        f" (minor units); {len(data['skus'])} SKUs for the orders ({data['sku_topped_up']}"
        f" restocked); {data['channels']} card channels; {len(data['wallets'])} baseline wallets"
        f" ({data['raw_funded']} funded)",
        flush=True,
    )
    print(
        f"placing {sum(pools.values())} orders in {args.order_processes} processes "
        f"({', '.join(f'{k} {v}' for k, v in pools.items())}) ...",
        flush=True,
    )
    orders, took = place_orders(env, pools, data, processes=args.order_processes, seed=1)
    print(f"  placed in {took:.1f} s ({sum(pools.values()) / took:.0f} orders/s)", flush=True)
    print(f"  {databases_vacuumed(data['databases'])}", flush=True)

    load_args = {"seconds": args.seconds, "connections": args.connections}
    raw = []
    if "wallet" in methods:
        for name, rows in [
            ("plain wallet debit (raw SQL)", None),
            ("plain debit + order row on shard", orders["raw"]),
        ]:
            print(f"  will load: {name}", flush=True)
            raw.append(raw_scenario(name, data, rows, run, **load_args))
    direct = None
    if "card" in methods:
        print("  will load: the sandbox acquirer directly (authorize + capture)", flush=True)
        direct = direct_scenario(acquirer, run, **load_args)

    processes, threads = web_model({**env, **({"WEB_THREADS": str(args.threads)}
                                              if args.threads else {})})  # fmt: skip
    worker_model = (
        f"gunicorn {processes} processes x {threads} threads ({args.worker_class or 'gthread'})"
    )
    http: dict[str, LoadResult] = {}
    with gunicorn(env, threads=args.threads, worker_class=args.worker_class) as base:
        url = base + "/api/v1/orders/"  # each request names its own order's path
        for name, method in [
            ("HTTP wallet payment", "wallet"),
            ("HTTP card payment (acquirer)", "card"),
        ]:
            if method not in methods:
                continue
            print(f"  will load: {name}", flush=True)
            http[method] = load(
                name, url,
                script=lua_script(tmp, method, method, orders[method]),
                warmup_script=lua_script(tmp, f"{method}_warm", method, orders[f"{method}_warm"]),
                make_request=request_factory(
                    base, method, _fresh_orders(orders, f"{method}_warm", method)
                ),
                label=payment_label,
                timeout=HTTP_TIMEOUT,
                **load_args,
            )  # fmt: skip

    if compare_sync:
        print("  will load: HTTP card payment under 2 sync workers", flush=True)
        with gunicorn(env, workers=2, threads=1, worker_class="sync") as base:
            http["card_sync"] = load(
                "HTTP card payment, 2 sync workers", base + "/api/v1/orders/",
                script=lua_script(tmp, "card_sync", "card", orders["card_sync"]),
                warmup_script=lua_script(tmp, "card_sync_warm", "card", orders["card_sync_warm"]),
                make_request=request_factory(
                    base, "card", _fresh_orders(orders, "card_sync_warm", "card_sync")
                ),
                label=payment_label,
                timeout=HTTP_TIMEOUT,
                **load_args,
            )  # fmt: skip

    print("  in-process payment_pay ...", flush=True)
    in_process_spec = {
        "run": run,
        "warm": 10,
        "wallet": args.in_process if "wallet" in methods else 0,
        "card": max(args.in_process // 5, 10) if "card" in methods else 0,
        "buyers": [buyer["id"] for buyer in data["buyers"][:IN_PROCESS_BUYERS]],
        "codes": [sku["code"] for sku in data["skus"]],
    }
    in_process = shell_json(
        "bench.payments", "shell_in_process", json.dumps(in_process_spec), env=env
    )
    verify_path = tmp / "verify.json"
    checks = {}
    for method in methods:
        checks[method] = [o["id"] for o in orders[f"{method}_warm"] + orders[method]]
        checks[f"{method} timed"] = [o["id"] for o in orders[method]]  # ran out?
    verify_path.write_text(json.dumps(checks))
    verified = shell_json("bench.payments", "shell_verify", str(verify_path), env=env)

    wallet, card = http.get("wallet"), http.get("card")
    if wallet:
        print_table(
            [(raw[0], raw[0]), (raw[1], raw[0]), (wallet, raw[0])]
            + ([(card, raw[0])] if card else []),
            rate_label="payments/s",
            ratio_label="x debit",
        )
    if card:
        print_table(
            [(direct, direct), (card, direct)]
            + ([(http["card_sync"], direct)] if "card_sync" in http else []),
            rate_label="payments/s",
            ratio_label="x acquirer",
        )
    for result in raw + ([direct] if direct else []) + list(http.values()):
        extra = ""
        if result in http.values():
            extra = f"  (non-201: {result.errors}, not succeeded: {_not_succeeded(result)})"
        print(f"  {result.name}: {json.dumps(result.statuses, sort_keys=True)}{extra}")
    for method in methods:
        v = verified[method]
        print(
            f"  database, this run's {v['orders']} {method} orders (warm-up included):"
            f" payments {json.dumps(v['payments'], sort_keys=True)},"
            f" TCC {json.dumps(v['tcc'], sort_keys=True)}"
            + (
                f", {v['attempts']} acquirer authorizations (p50 {v['attempt_ms_p50']} ms,"
                f" mean {v['attempt_ms_mean']:.0f} ms)"
                if v["attempts"]
                else ""
            )
        )
        timed = verified[f"{method} timed"]
        # (wrk checks the script with one request() call of its own: one order is never sent)
        if sum(timed["payments"].values()) >= timed["orders"] - 1:
            print(f"  WARNING: the {method} orders ran out: raise --{method}-rate")
    print(
        "  (the database also counts the warm-up and the requests still in flight when the load"
        " stopped)"
    )
    _print_in_process(in_process)
    results_in = in_process["results"]
    if wallet:
        print(
            f"\nHTTP wallet payment = {wallet.rps / raw[0].rps:.3f}x plain wallet debit "
            f"({raw[0].rps / wallet.rps:.0f}x slower: TCC + idempotency + HTTP/Django); the debit "
            f"plus the order row on the shard = {raw[1].rps / raw[0].rps:.2f}x plain debit"
            + (f"; card = {card.rps / wallet.rps:.2f}x wallet over HTTP." if card else ".")
        )
    slots = processes * threads
    for method, result in http.items():
        if method == "card_sync":
            continue
        print(
            f"{method}: {slots} request slots ({worker_model}) / rate = "
            f"{1000 * slots / result.rps:.0f} ms per payment and slot; in process, without HTTP "
            f"or concurrency: {results_in[method]['ms_per_payment']:.0f} ms."
        )
    if card:
        card_in = results_in["card"]
        print(
            f"HTTP card payment = {card.rps / direct.rps:.2f}x the sandbox acquirer alone "
            f"(authorize + capture straight to it, same {args.connections} connections; "
            f"target >= 0.5x). Its simulated latency is {card_in['acquirer_ms']:.0f} ms of every "
            f"card payment ({card_in['acquirer_calls']:.1f} calls; not subtracted): "
            f"{slots} request slots can wait on it for at most "
            f"{1000 * slots / card_in['acquirer_ms']:.0f} payments/s."
        )
    print(
        f"{args.connections} connections, {args.seconds} s each, {worker_model}, "
        f"load tool {next(iter(http.values())).tool}"
    )
    print(f"command: {command}")
    path = save(
        "payments",
        {
            "raw": raw,
            "direct": direct,
            "http": list(http.values()),
            "in_process": in_process,
            "verified": verified,
            "orders_placed_s": took,
            "pools": pools,
            "args": vars(args),
            "worker_model": worker_model,
            "command": command,
            "acquirer": acquirer,
        },
    )
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    rows = []
    if wallet and raw:
        rows.append(summary_row("wallet payment", wallet, baseline="plain wallet debit (raw SQL)",
                                baseline_rps=raw[0].rps, target=0.25))  # fmt: skip
    if card and direct:
        rows.append(summary_row("card payment", card,
                                baseline="sandbox acquirer direct (authorize + capture)",
                                baseline_rps=direct.rps, target=0.5))  # fmt: skip
    summary_rows(rows)
    return {"env": env}


if __name__ == "__main__":
    main()
