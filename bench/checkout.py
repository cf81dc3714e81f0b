"""Checkout benchmark (issue: checkout).

Under gunicorn (config/gunicorn.py, services profile, outbox publishing to RabbitMQ on): checkouts/s
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
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LUA_STATUS_DONE,
    PASSWORD,
    ROOT,
    audit,
    bench_env,
    connect_all,
    databases_vacuumed,
    gunicorn,
    load,
    lua_list,
    manage,
    minimal_gunicorn,
    print_table,
    save,
    summary_row,
    summary_rows,
    threaded_load,
    web_model_text,
)

SPREAD_UNITS = 1_000_000  # per spread SKU: far more than a run can sell
HOT_UNITS = 10_000_000
ORDERS_API = "/api/v1/orders/"

# Runs in `manage.py shell` on the bench env; prints one JSON line (the last) for main().
# Two disjoint SKU sets (HTTP and raw baseline), each `skus` spread SKUs + one hot SKU, are
# topped up to their target stock (through the stock service) and freed of per-user limits.
PREPARE = """
import json
from django.conf import settings
from apps.catalog.models import Sku
from apps.catalog.selectors import skus_for_checkout
from apps.catalog.services import catalog_changed
from bench.common import shop_buyers, shop_databases, shop_stock_at_least
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
    received += shop_stock_at_least(skus, floor=target, target=target)
print(json.dumps({{
    "skus": {{
        group: [{{"id": s.id, "code": s.code, "product_id": s.product_id, "name": s.name,
                 "price": s.price, "currency": s.currency}} for s in skus]
        for group, skus in groups.items()
    }},
    "buyers": shop_buyers(USERS),
    "databases": shop_databases(),
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


def _raw_worker(data: dict, skus: list[dict], seed: int):
    """One baseline thread: its own connection per database; each step is one checkout."""
    rng = random.Random(seed)
    conns = connect_all(data["databases"])
    default, ttl = conns["default"], data["ttl"]

    def step() -> str:
        buyer, sku = rng.choice(data["buyers"]), rng.choice(skus)
        shard = conns[buyer["alias"]]
        try:
            order_id = shard.execute(data["next_id_sql"], [buyer["logical"]]).fetchone()[0]
            with default.transaction():
                if default.execute(RESERVE, [sku["id"]]).rowcount != 1:
                    raise SoldOut
                default.execute(INSERT_RESERVATION, [order_id, buyer["id"], sku["id"], ttl])
            try:
                with shard.transaction():
                    shard.execute(
                        INSERT_ORDER, [order_id, buyer["id"], sku["currency"], sku["price"], ttl]
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
        except SoldOut:
            return "out_of_stock"
        except psycopg.Error as exc:
            return f"error {type(exc).__name__}"
        return "ok"

    def close() -> None:
        for conn in conns.values():
            conn.close()

    return step, close


def raw_scenario(name: str, data: dict, skus: list[dict], *, seconds: int, connections: int):
    """``connections`` threads checking out as fast as they can for ``seconds`` (after the
    same warm-up as the HTTP loads)."""
    return threaded_load(
        name,
        "postgresql (psycopg)",
        lambda seed: _raw_worker(data, skus, seed),
        seconds=seconds,
        connections=connections,
    )


# --- HTTP checkout: wrk script and its Python twin ------------------------------------------

LUA = (
    """-- generated by bench/checkout.py: one checkout per request, a fresh Idempotency-Key each
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

"""
    + LUA_STATUS_DONE
)  # no braces: .format() leaves it be


def lua_script(directory: Path, name: str, tokens: list[str], codes: list[str]) -> Path:
    path = directory / f"{name}.lua"
    path.write_text(LUA.format(tokens=lua_list(tokens), skus=lua_list(codes)))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=220)  # >= 402 sellable SKUs
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--skus", type=int, default=200, help="SKUs of the spread scenario")
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    began = time.monotonic()

    env = bench_env()
    print("preparing: migrate, seed, stock, tokens ...", flush=True)
    data = prepare(env, products=args.products, users=args.users, skus=args.skus)
    print(f"  {databases_vacuumed(data['databases'])}", flush=True)
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

    # For reference: what the same worker model serves when a request does (almost) nothing.
    print("  will load: minimal Django view", flush=True)
    with minimal_gunicorn(env, workers=2) as base:
        minimal = load("minimal Django view (reference)", base + "/healthz", **load_args)

    print_table(
        [
            (raw[0], raw[0]),
            (http[0], raw[0]),
            (raw[1], raw[1]),
            (http[1], raw[1]),
            (minimal, raw[0]),
        ],
        rate_label="checkouts/s",
        ratio_label="x raw",
    )
    for result in raw + http:
        print(f"  {result.name}: {json.dumps(result.statuses, sort_keys=True)}")
    print(
        f"\nHTTP checkout = {http[0].rps / raw[0].rps:.2f}x raw SQL (spread SKUs), "
        f"{http[1].rps / raw[1].rps:.2f}x (one hot SKU); {args.connections} connections, "
        f"{args.seconds} s each, {web_model_text(env)}, load tool {http[0].tool}"
    )
    print(
        f"minimal Django view (same worker model): {minimal.rps:.0f} req/s; HTTP checkout = "
        f"{http[0].rps / minimal.rps:.2f}x of it (spread), {http[1].rps / minimal.rps:.2f}x (hot)"
    )
    print(f"command: {command}")
    path = save(
        "checkout",
        {"raw": raw, "http": http, "minimal": minimal, "args": vars(args), "command": command},
    )
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    summary_rows(
        [
            summary_row(f"checkout, {kind}", result, baseline=f"raw SQL, {kind}",
                        baseline_rps=baseline.rps, target=0.35)
            for kind, result, baseline in [("spread SKUs", http[0], raw[0]),
                                           ("one hot SKU", http[1], raw[1])]
        ]
    )  # fmt: skip
    held = audit(env)
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if not held:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
