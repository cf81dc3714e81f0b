"""Checkout benchmark (issue: checkout).

Under gunicorn (2 sync workers, services profile, outbox publishing to RabbitMQ on): checkouts/s
and p50/p99 of ``POST /api/v1/orders/`` (one line, quantity 1, a fresh Idempotency-Key each
time, a random one of 400 buyers) for (a) a random one of 200 SKUs and (b) one hot SKU. Each is
compared with a raw psycopg baseline measured in the same run on the same PostgreSQL with the
same concurrency: the database work a checkout cannot avoid, i.e. an order id from the buyer's
shard (the app's own SQL), the conditional stock UPDATE + reservation INSERT (one transaction on
``default``), then the order row + one line row (one transaction on the buyer's shard).

    python bench/checkout.py [--seconds 15] [--connections 8]

The baseline runs first, on SKUs of its own, and leaves real, consistent pending orders (ids from
the shard's sequence, held reservations, totals that add up), so ``audit_invariants`` -- run at
the end -- holds. Every run adds its orders to the bench databases; the SKUs are topped up to
their target stock before each run, so neither scenario ever sells out.

Needs the local PostgreSQL, Redis and RabbitMQ of the services profile, and wrk (falls back to
a slower Python load generator when wrk is not installed).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    ROOT,
    LoadResult,
    bench_env,
    gunicorn,
    load,
    manage,
    percentile,
    print_table,
    save,
)

SPREAD_UNITS = 1_000_000  # per spread SKU: far more than a run can sell
HOT_UNITS = 10_000_000
PASSWORD = "benchpass"  # bench-only buyers in the bench databases
ORDERS_API = "/api/v1/orders/"

# Runs in `manage.py shell` on the bench env; prints one JSON line (the last) for main().
# Two disjoint SKU sets (HTTP and raw baseline), each `skus` spread SKUs + one hot SKU, are
# topped up to their target stock (through the stock service) and freed of per-user limits.
PREPARE = """
import json
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from apps.catalog.models import Sku
from apps.catalog.selectors import skus_for_checkout
from apps.catalog.services import catalog_changed
from apps.inventory.models import Stock
from apps.inventory.services import stock_receive
from shop.sharding import logical_shard_for_user, shard_for_user
from shop.sharding.ids import _POSTGRES_NEXT_ID

SKUS, USERS, SPREAD_UNITS, HOT_UNITS = {skus}, {users}, {spread_units}, {hot_units}
limited = Sku.objects.filter(per_user_limit__isnull=False)
products = list(limited.values_list("product_id", flat=True))
if products:
    limited.update(per_user_limit=None)
    catalog_changed(product_ids=products)
codes = Sku.objects.filter(code__startswith="DEMO-").values_list("code", flat=True)
sellable = sorted((s for s in skus_for_checkout(codes).values() if s.sellable), key=lambda s: s.id)
if len(sellable) < 2 * SKUS + 2:
    raise SystemExit(f"only {{len(sellable)}} sellable demo SKUs, need {{2 * SKUS + 2}}")
groups = {{
    "http_spread": sellable[:SKUS],
    "http_hot": sellable[SKUS:SKUS + 1],
    "raw_spread": sellable[SKUS + 1:2 * SKUS + 1],
    "raw_hot": sellable[2 * SKUS + 1:2 * SKUS + 2],
}}
received = 0
for group, skus in groups.items():
    target = HOT_UNITS if group.endswith("hot") else SPREAD_UNITS
    stocks = Stock.objects.filter(sku_id__in=[s.id for s in skus])
    have = dict(stocks.values_list("sku_id", "available"))
    for sku in skus:
        if have.get(sku.id, 0) < target:
            stock_receive(sku_id=sku.id, quantity=target - have.get(sku.id, 0))
            received += 1
names = ["buyer" if i == 1 else f"buyer{{i}}" for i in range(1, USERS + 1)]
users = list(get_user_model().objects.filter(username__in=names).order_by("id"))
if len(users) != USERS:
    raise SystemExit(f"found {{len(users)}} of {{USERS}} buyers")
buyers = [
    {{
        "id": user.id,
        "token": Token.objects.get_or_create(user=user)[0].key,
        "alias": shard_for_user(user.id),
        "logical": logical_shard_for_user(user.id),
    }}
    for user in users
]
shards = {{}}
for alias in ["default", *settings.ORDER_SHARD_ALIASES]:
    db = settings.DATABASES[alias]
    shards[alias] = {{
        "host": db["HOST"], "port": db["PORT"], "user": db["USER"],
        "password": db["PASSWORD"], "dbname": db["NAME"],
    }}
print(json.dumps({{
    "skus": {{
        group: [{{"id": s.id, "code": s.code, "product_id": s.product_id, "name": s.name,
                 "price": s.price, "currency": s.currency}} for s in skus]
        for group, skus in groups.items()
    }},
    "buyers": buyers,
    "databases": shards,
    "next_id_sql": _POSTGRES_NEXT_ID,
    "ttl": settings.ORDER_RESERVATION_TTL,
    "topped_up": received,
}}))
"""


def prepare(env: dict[str, str], *, products: int, users: int, skus: int) -> dict:
    manage("migrate_all", env=env)
    print(
        manage(
            "seed_demo", "--products", str(products), "--users", str(users),
            "--password", PASSWORD, env=env,
        ).strip().splitlines()[0]
    )  # fmt: skip
    code = PREPARE.format(skus=skus, users=users, spread_units=SPREAD_UNITS, hot_units=HOT_UNITS)
    return json.loads(manage("shell", "-c", code, env=env).strip().splitlines()[-1])


# --- Raw baseline: the same database work through psycopg -----------------------------------

RESERVE = (
    "UPDATE inventory_stock SET available = available - 1, reserved = reserved + 1"
    " WHERE sku_id = %s AND available >= 1"
)
INSERT_RESERVATION = (
    "INSERT INTO inventory_reservation"
    " (order_id, user_id, sku_id, quantity, status, expires_at, created_at, updated_at)"
    " VALUES (%s, %s, %s, 1, 'held', now() + make_interval(secs => %s), now(), now())"
)
INSERT_ORDER = (
    "INSERT INTO orders_order (id, user_id, status, currency, total, expires_at, created_at,"
    " updated_at, paid_at) VALUES (%s, %s, 'pending_payment', %s, %s,"
    " now() + make_interval(secs => %s), now(), now(), NULL)"
)
INSERT_LINE = (
    "INSERT INTO orders_orderline (order_id, user_id, sku_id, sku_code, product_id, name,"
    " unit_price, quantity, line_total) VALUES (%s, %s, %s, %s, %s, %s, %s, 1, %s)"
)
# Compensation when the order cannot be written: no stock stays held without an order.
RELEASE = (
    "UPDATE inventory_stock SET available = available + 1, reserved = reserved - 1"
    " WHERE sku_id = %s"
)
RELEASE_RESERVATION = (
    "UPDATE inventory_reservation SET status = 'released', updated_at = now()"
    " WHERE order_id = %s AND status = 'held'"
)


class SoldOut(Exception):
    pass


@dataclass
class _Raw:
    latencies: list[float]
    statuses: Counter[str]


def _raw_worker(data: dict, skus: list[dict], stop: float, seed: int, out: _Raw) -> None:
    rng = random.Random(seed)
    dsn = {alias: make_conninfo(**params) for alias, params in data["databases"].items()}
    conns = {alias: psycopg.connect(conninfo, autocommit=True) for alias, conninfo in dsn.items()}
    default, ttl = conns["default"], data["ttl"]
    try:
        while time.monotonic() < stop:
            buyer, sku = rng.choice(data["buyers"]), rng.choice(skus)
            shard = conns[buyer["alias"]]
            started = time.perf_counter()
            try:
                order_id = shard.execute(data["next_id_sql"], [buyer["logical"]]).fetchone()[0]
                with default.transaction():
                    if default.execute(RESERVE, [sku["id"]]).rowcount != 1:
                        raise SoldOut
                    default.execute(INSERT_RESERVATION, [order_id, buyer["id"], sku["id"], ttl])
                try:
                    with shard.transaction():
                        shard.execute(
                            INSERT_ORDER,
                            [order_id, buyer["id"], sku["currency"], sku["price"], ttl],
                        )
                        shard.execute(
                            INSERT_LINE,
                            [order_id, buyer["id"], sku["id"], sku["code"], sku["product_id"],
                             sku["name"], sku["price"], sku["price"]],
                        )  # fmt: skip
                except psycopg.Error:
                    with default.transaction():
                        default.execute(RELEASE, [sku["id"]])
                        default.execute(RELEASE_RESERVATION, [order_id])
                    raise
                label = "ok"
            except SoldOut:
                label = "out_of_stock"
            except psycopg.Error as exc:
                label = f"error {type(exc).__name__}"
            out.latencies.append((time.perf_counter() - started) * 1000)
            out.statuses[label] += 1
    finally:
        for conn in conns.values():
            conn.close()


def raw_load(name: str, data: dict, skus: list[dict], *, seconds: int, connections: int):
    """``connections`` threads (each with its own connection per database) checking out as
    fast as they can for ``seconds``."""
    results = [_Raw([], Counter()) for _ in range(connections)]
    stop = time.monotonic() + seconds
    threads = [
        threading.Thread(target=_raw_worker, args=(data, skus, stop, seed, results[seed]))
        for seed in range(connections)
    ]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    latencies = sorted(ms for r in results for ms in r.latencies)
    statuses = sum((r.statuses for r in results), Counter())
    return LoadResult(
        name=name,
        url="postgresql (psycopg)",
        requests=len(latencies),
        errors=len(latencies) - statuses["ok"],
        seconds=took,
        rps=len(latencies) / took,
        p50_ms=statistics.median(latencies) if latencies else float("nan"),
        p99_ms=percentile(latencies, 0.99),
        tool="psycopg",
        statuses=dict(statuses),
    )


def raw_scenario(name: str, data: dict, skus: list[dict], *, seconds: int, connections: int):
    raw_load(name, data, skus, seconds=2, connections=connections)  # warm-up, as load() does
    return raw_load(name, data, skus, seconds=seconds, connections=connections)


# --- HTTP checkout: wrk script and its Python twin ------------------------------------------

LUA = """-- generated by bench/checkout.py: one checkout per request, a fresh Idempotency-Key each
local tokens = {tokens}
local skus = {skus}
local threads = {{}}
local counter = 0
local prefix = ""
statuses = {{}}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  -- A random prefix per wrk process and thread: keys never repeat across runs or warm-ups.
  local urandom = assert(io.open("/dev/urandom", "rb"))
  local bytes = urandom:read(8)
  urandom:close()
  local seed = 0
  for i = 1, #bytes do
    prefix = prefix .. string.format("%02x", bytes:byte(i))
    seed = (seed * 256 + bytes:byte(i)) % 2147483647
  end
  prefix = prefix .. "-" .. thread_id
  math.randomseed(seed)
end

function request()
  counter = counter + 1
  local key = string.format("bench-%s-%d-%d", prefix, counter, math.random(0, 999999999))
  local body = '{{"items":[{{"sku":"' .. skus[math.random(#skus)] .. '","quantity":1}}]}}'
  local headers = {{
    ["Authorization"] = "Token " .. tokens[math.random(#tokens)],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key,
  }}
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  local label = tostring(status)
  if headers["Idempotent-Replayed"] then label = label .. " replayed" end
  if status ~= 201 then
    local code = body and body:match('"code"%s*:%s*"([^"]+)"')
    if code then label = label .. " " .. code end
  end
  statuses[label] = (statuses[label] or 0) + 1
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for label, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %s: %d\\n", label, count))
    end
  end
end
"""


def _lua_list(values: list[str]) -> str:
    for value in values:
        if not value.isascii() or not value.isprintable() or '"' in value or "\\" in value:
            raise ValueError(f"cannot embed {value!r} in the wrk script")
    return "{" + ", ".join(f'"{value}"' for value in values) + "}"


def lua_script(directory: Path, name: str, tokens: list[str], codes: list[str]) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(LUA.format(tokens=_lua_list(tokens), skus=_lua_list(codes)))
    return path


def request_factory(url: str, tokens: list[str], codes: list[str]):
    """The Python fallback's version of the wrk script."""

    def make() -> urllib.request.Request:
        body = {"items": [{"sku": random.choice(codes), "quantity": 1}]}
        return urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Token {random.choice(tokens)}",
                "Content-Type": "application/json",
                "Idempotency-Key": f"bench-{uuid.uuid4()}",
            },
        )

    return make


def audit(env: dict[str, str]) -> bool:
    result = subprocess.run(
        [PYTHON, "manage.py", "audit_invariants"], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    violations = [line for line in lines if line.startswith("VIOLATION")]
    for line in violations[:20]:
        print(f"  {line}")
    if len(violations) > 20:
        print(f"  ... and {len(violations) - 20} more violations")
    verdict = lines[-1] if lines else result.stderr.strip()[-500:]
    print(f"audit_invariants: {verdict} (exit {result.returncode})")
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--skus", type=int, default=200, help="SKUs of the spread scenario")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    began = time.monotonic()

    env = bench_env()
    print("preparing: migrate, seed, stock, tokens ...", flush=True)
    data = prepare(env, products=args.products, users=args.users, skus=args.skus)
    skus = data["skus"]
    print(
        f"  {len(data['buyers'])} buyers with tokens; {args.skus} spread SKUs + 1 hot SKU each "
        f"for HTTP (hot {skus['http_hot'][0]['code']}) and the raw baseline (hot "
        f"{skus['raw_hot'][0]['code']}); {data['topped_up']} SKUs topped up",
        flush=True,
    )

    load_args = {"seconds": args.seconds, "connections": args.connections}
    raw = []
    for name, group in [
        ("raw SQL: spread SKUs", "raw_spread"),
        ("raw SQL: one hot SKU", "raw_hot"),
    ]:
        print(f"  will load: {name}", flush=True)
        raw.append(raw_scenario(name, data, skus[group], **load_args))

    tokens = [buyer["token"] for buyer in data["buyers"]]
    http = []
    with tempfile.TemporaryDirectory(prefix="bench-checkout-") as tmp, gunicorn(env) as base:
        url = base + ORDERS_API
        for name, group in [
            ("HTTP checkout: spread SKUs", "http_spread"),
            ("HTTP checkout: one hot SKU", "http_hot"),
        ]:
            print(f"  will load: {name}", flush=True)
            codes = [sku["code"] for sku in skus[group]]
            script = lua_script(Path(tmp), group, tokens, codes)
            http.append(
                load(name, url, script=script, make_request=request_factory(url, tokens, codes),
                     **load_args)
            )  # fmt: skip

    print_table(
        [(raw[0], raw[0]), (http[0], raw[0]), (raw[1], raw[1]), (http[1], raw[1])],
        rate_label="checkouts/s",
        ratio_label="x raw",
    )
    for result in raw + http:
        print(f"  {result.name}: {json.dumps(result.statuses, sort_keys=True)}")
    print(
        f"\nHTTP checkout = {http[0].rps / raw[0].rps:.2f}x raw SQL (spread SKUs), "
        f"{http[1].rps / raw[1].rps:.2f}x (one hot SKU); {args.connections} connections, "
        f"{args.seconds} s each, gunicorn 2 workers x 1 thread, load tool {http[0].tool}"
    )
    print(f"command: {command}")
    path = save("checkout", {"raw": raw, "http": http, "args": vars(args), "command": command})
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    held = audit(env)
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if not held:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
