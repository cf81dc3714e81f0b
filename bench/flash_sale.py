"""Flash-sale benchmark (issue: flash sale).

Under gunicorn (config/gunicorn.py, services profile, outbox publishing to RabbitMQ on) with a real
Celery worker beside it (``celery -A config worker`` on the Procfile's queues, concurrency 2):
one SKU with 1,000 units on flash sale (``start_flash_sale --stock 1000 --per-user-limit 2``)
and 20,000 purchase attempts from 2,000 buyers -- ``POST /api/v1/orders/``, one line of
quantity 1, a fresh Idempotency-Key each, 10 attempts per buyer in a shuffled order, over 8
connections. The Redis gate admits an attempt (202 and a ticket, which the worker turns into an
order) or refuses it at once (409 ``out_of_stock`` or ``purchase_limit_exceeded``; 503 when the
sale's queue is full).

Reported: orders accepted (must be 1,000) and oversell (must be 0), counted in the order shards;
the admission endpoint's requests/s and p50/p99 as a ratio to the minimal Django view
(``bench.common.minimal_gunicorn``: Security and Common middleware only, the same gunicorn
worker model) measured in the same run at the same concurrency -- for the whole sale (target:
at least 0.5x the requests/s) and for ``--after`` more attempts once it is sold out, every one
a refusal (target: at least 0.8x); the time from the sale's start (the first attempt) to sold
out (the first ``out_of_stock`` answer), both on the client's clock, and until every ticket
was resolved and every order written (database timestamps; same host, same clock). Then the
same 20,000 attempts through the plain database path, for comparison: another SKU with 1,000
units, not on sale, where each attempt is a synchronous 201 or 409 through the conditional
stock UPDATE.

    python bench/flash_sale.py [--connections 8] [--seconds 10] [--after 30000] [--no-plain]

Each run has SKUs of its own (``BENCH-FLASH-<run>``, ``BENCH-PLAIN-<run>``, and
``BENCH-WARM-<run>`` for a short warm-up of the checkout path), so earlier runs' orders do not
count; at the end its sale is ended and its SKUs deactivated. The buyers are the bench
databases' ``buyer`` ... ``buyer2000`` (the missing ones created in bulk, with API tokens).
The rate-limit layers (endpoint 1000/s, hot_sku 2000/s, user_writes 100 per 600 s per buyer,
...) would refuse this load from one machine below what the server can do, so the run raises
them in the bench database's RateLimitRule rows -- still evaluated on every request, never
refusing -- and restores them afterwards; the sale's per-buyer limit stays. Each list of
attempts is sent exactly once: wrk walks it with a Lua script and is stopped when the last
answer is in (the Python fallback sends the same list). ``audit_invariants`` runs at the end.

Needs the local PostgreSQL, Redis and RabbitMQ of the services profile (bench databases, Redis
database 14, the broker's usual queues: another worker consuming them would take this run's
tickets -- the run warns when it sees one), and wrk (falls back to a slower Python load
generator when wrk is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LIST_DONE,
    PASSWORD,
    ROOT,
    LoadResult,
    audit,
    bench_env,
    celery_worker,
    connect_all,
    databases_vacuumed,
    gunicorn,
    load,
    load_mean,
    lua_list,
    manage,
    minimal_gunicorn,
    print_table,
    run_list,
    save,
    shell_json,
    status_label,
    summary_row,
    summary_rows,
    web_model_text,
)

WARM_ATTEMPTS = 200  # checkouts of the warm-up SKU before anything is measured
WARM_UNITS = 100_000
PRICE = 1999
# Rate-limit layers for the run: (rate, period seconds, burst), far above anything one machine
# sends, so every layer is still checked on every request and never refuses.
OPEN_LIMITS = {
    "system": (1_000_000, 1.0, 1_000_000),
    "endpoint": (1_000_000, 1.0, 1_000_000),
    "hot_sku": (1_000_000, 1.0, 1_000_000),
    "user_writes": (1_000_000, 600.0, 1_000_000),
}
# The answers a purchase attempt may rightly get; anything else (and no answer) is an error.
EXPECTED = {"201", "202", "409 out_of_stock", "409 purchase_limit_exceeded"}
ORDERS_API = "/api/v1/orders/"
TICKET_API = "/api/v1/checkout-tickets/{ticket}/"
SAMPLE_TICKETS = 20  # tickets also read back over HTTP, as a buyer polls them
# The shop's and the minimal site's gunicorn: the same worker model for both.
WORKERS = THREADS = None  # config/gunicorn.py's (WEB_CONCURRENCY, WEB_THREADS)


# --- Shop side: these functions run inside `manage.py shell` on the bench env ----------------


def shell_prepare(spec_text: str) -> None:
    """Buyers with API tokens (missing ones in bulk), the run's SKUs under one bench product
    (PLAIN and WARM stocked, FLASH empty until its sale starts), earlier runs' leftover bench
    sales ended, and the rate-limit layers opened. Prints JSON."""
    from django.conf import settings

    from apps.catalog.models import Product, Sku
    from apps.catalog.services import catalog_changed
    from apps.flashsales.models import FlashSale
    from apps.flashsales.selectors import FLASH_LIST_TTL
    from apps.flashsales.services import flash_sale_end
    from apps.inventory.services import stock_receive
    from bench.common import shop_buyers, shop_databases
    from shop.models import RateLimitRule

    spec = json.loads(spec_text)
    buyers = shop_buyers(spec["users"], create_missing=True)

    ended = 0
    for sale in FlashSale.objects.filter(active=True, sku__code__startswith="BENCH-FLASH-"):
        flash_sale_end(sku_id=sale.sku_id)  # an interrupted run's
        ended += 1
    category_id = (
        Product.objects.filter(slug__startswith="demo-", is_active=True)
        .values_list("category_id", flat=True)
        .first()
    )
    if category_id is None:
        raise SystemExit("no demo products: seed_demo first")
    product, _ = Product.objects.get_or_create(
        slug="bench-flash-sale",
        defaults={"name": "Flash-sale bench item", "category_id": category_id},
    )
    skus = {}
    for kind in ("flash", "plain", "warm"):
        sku = Sku.objects.create(
            product=product, code=f"BENCH-{kind.upper()}-{spec['run']}", price=PRICE
        )
        skus[kind] = {"id": sku.id, "code": sku.code}
    stock_receive(sku_id=skus["plain"]["id"], quantity=spec["units"])
    stock_receive(sku_id=skus["warm"]["id"], quantity=WARM_UNITS)
    catalog_changed(product_ids=[product.id])

    previous = {}
    for name, (rate, period, burst) in OPEN_LIMITS.items():
        row = RateLimitRule.objects.filter(name=name).first()
        values = row and {"rate": row.rate, "period_seconds": row.period_seconds,
                          "burst": row.burst, "enabled": row.enabled}  # fmt: skip
        opened = {"rate": rate, "period_seconds": period, "burst": burst, "enabled": True}
        # a row an interrupted run of this benchmark left behind is not the operators' rule
        previous[name] = None if values == opened else values
        RateLimitRule.objects.update_or_create(name=name, defaults=opened)
    print(
        json.dumps(
            {
                "buyers": buyers,
                "databases": shop_databases(),
                "skus": skus,
                "sales_ended": ended,
                "previous_limits": previous,
                "default_limits": {name: settings.RATE_LIMITS[name] for name in OPEN_LIMITS},
                "flash_list_ttl": FLASH_LIST_TTL,
                "queues": settings.CELERY_WORKER_QUEUES,
                "checkout_queue": settings.CHECKOUT_QUEUE,
            }
        )
    )


def shell_verify(spec_text: str) -> None:
    """What the database holds for each SKU of the run: order lines by order status, units in
    live orders (HOLDING_STATUSES) overall and per buyer, the stock row, checkout tickets by
    outcome, and the flash SKU's gate counters. Prints JSON."""
    from django.db.models import Count, Max

    from apps.flashsales.gate import gate_state
    from apps.inventory.models import Stock
    from apps.orders.models import CheckoutTicket, OrderLine
    from apps.orders.services import HOLDING_STATUSES
    from shop.sharding import order_shard_aliases

    report = {}
    for kind, sku_id in json.loads(spec_text).items():
        lines_by_status: Counter[str] = Counter()
        per_buyer: Counter[int] = Counter()
        live_lines, written = 0, []
        tickets: Counter[str] = Counter()
        resolved = []
        for alias in order_shard_aliases():
            rows = (
                OrderLine.objects.using(alias)
                .filter(sku_id=sku_id)
                .values_list("user_id", "quantity", "order__status", "order__created_at")
            )
            for user_id, quantity, status, created_at in rows:
                lines_by_status[status] += 1
                if status in HOLDING_STATUSES:
                    live_lines += 1
                    per_buyer[user_id] += quantity
                    written.append(created_at.timestamp())
            outcomes = (
                CheckoutTicket.objects.using(alias)
                .filter(gate_sku_id=sku_id)
                .values_list("status", "reject_code")
                .annotate(n=Count("id"), last=Max("updated_at"))
            )
            for status, code, n, last in outcomes:
                tickets[f"{status} {code}".strip()] += n
                if status != CheckoutTicket.Status.QUEUED:
                    resolved.append(last.timestamp())
        stock = Stock.objects.filter(sku_id=sku_id).values(
            "received", "available", "reserved", "sold"
        )
        gate = gate_state(sku_id=sku_id)
        counters = gate and {"remaining": gate.remaining, "queued": gate.queued, "seq": gate.seq}
        report[kind] = {
            "lines_by_order_status": dict(lines_by_status),
            "live_lines": live_lines,
            "units": sum(per_buyer.values()),
            "buyers": len(per_buyer),
            "most_per_buyer": max(per_buyer.values(), default=0),
            "first_written": min(written, default=None),
            "last_written": max(written, default=None),
            "tickets": dict(tickets),
            "last_resolved": max(resolved, default=None),
            "stock": stock.first(),
            "gate": counters,
        }
    print(json.dumps(report))


def shell_cleanup(spec_text: str) -> None:
    """Restore the rate-limit rules as they were, end the run's sale, deactivate its SKUs."""
    from apps.catalog.models import Sku
    from apps.catalog.services import skus_set_active
    from apps.flashsales.services import flash_sale_end
    from shop.models import RateLimitRule

    spec = json.loads(spec_text)
    for name, values in spec["previous_limits"].items():
        if values is None:
            RateLimitRule.objects.filter(name=name).delete()
        else:
            RateLimitRule.objects.update_or_create(name=name, defaults=values)
    sku_ids = list(Sku.objects.filter(code__in=spec["codes"]).values_list("id", flat=True))
    for sku_id in sku_ids:
        if Sku.objects.filter(id=sku_id, code__startswith="BENCH-FLASH-").exists():
            flash_sale_end(sku_id=sku_id)
    skus_set_active(sku_ids=sku_ids, active=False)
    print(json.dumps({"limits_restored": sorted(spec["previous_limits"]), "skus": len(sku_ids)}))


# --- The attempts: a wrk script walking a fixed list, and its Python twin ----------------------

LUA = """-- generated by bench/flash_sale.py: sends each purchase attempt of a fixed list once, in
-- order (one wrk thread, as bench/common.py runs wrk), then parks every connection and says so
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()  -- CLOCK_REALTIME, as Python's time.time() and PostgreSQL's now()
  ffi.C.clock_gettime(0, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) / 1e9
end

local tokens = {tokens}
local buyers = {buyers}  -- attempt i is made by the buyer of tokens[buyers[i]]
local body = '{{"items":[{{"sku":"{sku}","quantity":1}}]}}'
local connections = {connections}
local threads = {{}}
local checked, sent, parked = false, 0, 0
statuses, first_at, last_at = {{}}, {{}}, {{}}
began, extra = 0, 0

function setup(thread)
  table.insert(threads, thread)
end

local function attempt(i)
  local headers = {{
    ["Authorization"] = "Token " .. tokens[buyers[i]],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "{prefix}-" .. i,
  }}
  return wrk.format("POST", nil, headers, body)
end

function request()
  if not checked then  -- wrk calls request() once to check the script: that one is not sent
    checked = true
    return attempt(1)
  end
  if sent >= #buyers then  -- only after a socket error (no delay() first): not an attempt
    extra = extra + 1
    return wrk.format("GET", "/healthz")
  end
  sent = sent + 1
  if sent == 1 then began = now() end
  return attempt(sent)
end

function delay()  -- before each request; once the list is through, the connection stays idle
  if sent < #buyers then return 0 end
  parked = parked + 1
  if parked == connections then  -- every answer is in
    io.write("{done}\\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
  return 3600000
end

function response(status, headers, body)
  local label = tostring(status)
  if headers["Idempotent-Replayed"] then label = label .. " replayed" end
  if status >= 300 then
    local code = body and body:match('"code"%s*:%s*"([^"]+)"')
    if code then label = label .. " " .. code end
  end
  local t = now()
  statuses[label] = (statuses[label] or 0) + 1
  first_at[label] = first_at[label] or t
  last_at[label] = t
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local last = thread:get("last_at")
    for label, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %s: %d\\n", label, count))
    end
    for label, t in pairs(thread:get("first_at")) do
      io.write(string.format("time %s: %.6f %.6f\\n", label, t, last[label]))
    end
    io.write(string.format("began: %.6f\\nextra: %d\\n", thread:get("began"), thread:get("extra")))
  end
end
"""


@dataclass
class Timeline:
    """Client-side times (epoch seconds): the first attempt sent, and the first and last answer
    of each kind."""

    began: float = 0.0
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    extra: int = 0  # requests sent after the list was through (wrk, after a socket error)
    socket_errors: str = ""  # wrk's line about them, if any

    def record(self, status: int, body: bytes, headers: Mapping[str, str] | None) -> str:
        """The Python fallback's labeller: labels the answer and notes when it came."""
        label, now = status_label(status, body, headers), time.time()
        self.first.setdefault(label, now)
        self.last[label] = now
        return label

    @classmethod
    def from_wrk(cls, out: str) -> Timeline:
        timeline = cls(
            began=float(re.search(r"^began: ([\d.]+)$", out, re.MULTILINE).group(1)),
            extra=int(re.search(r"^extra: (\d+)$", out, re.MULTILINE).group(1)),
        )
        if match := re.search(r"Socket errors: .*", out):
            timeline.socket_errors = match.group(0)
        for label, first, last in re.findall(r"^time (.+): ([\d.]+) ([\d.]+)$", out, re.MULTILINE):
            timeline.first[label], timeline.last[label] = float(first), float(last)
        return timeline

    def after(self, label: str, which: str = "first") -> float | None:
        """Seconds from the first attempt to the first (or last) answer of a kind."""
        moment = getattr(self, which).get(label)
        return None if moment is None else moment - self.began


def attempt_order(buyers: int, each: int, seed: int) -> list[int]:
    """Buyer indexes (1-based, as in Lua), each ``each`` times, shuffled."""
    order = [i for i in range(1, buyers + 1) for _ in range(each)]
    random.Random(seed).shuffle(order)
    return order


def attempts(
    name: str,
    base: str,
    tmp: Path,
    *,
    tokens: list[str],
    order: list[int],
    sku: str,
    prefix: str,
    connections: int,
) -> tuple[LoadResult, Timeline]:
    """Send the attempts of ``order`` (buyer indexes into ``tokens``) for ``sku``, each once;
    errors are answers outside EXPECTED and attempts without an answer. (A 200 is the answer to
    a GET /healthz wrk sent in place of an attempt after a socket error: not an attempt.)"""
    script = tmp / f"{prefix}.lua"
    script.write_text(
        LUA.format(tokens=lua_list(tokens), buyers="{" + ",".join(map(str, order)) + "}",
                   sku=sku, prefix=prefix, connections=connections, done=LIST_DONE)
    )  # fmt: skip
    timeline = Timeline()
    remaining = iter(enumerate(order, 1))
    lock = threading.Lock()
    body = json.dumps({"items": [{"sku": sku, "quantity": 1}]}).encode()

    def next_attempt() -> urllib.request.Request | None:  # the Python fallback's list walk
        with lock:
            i, buyer = next(remaining, (0, 0))
        if not i:
            return None
        if i == 1:
            timeline.began = time.time()
        key, token = f"{prefix}-{i}", tokens[buyer - 1]
        headers = {"Authorization": f"Token {token}", "Idempotency-Key": key}
        headers["Content-Type"] = "application/json"
        return urllib.request.Request(base + ORDERS_API, data=body, method="POST", headers=headers)

    result, out = run_list(name, base + ORDERS_API, script=script, make_request=next_attempt,
                           label=timeline.record, connections=connections)  # fmt: skip
    if out:
        timeline = Timeline.from_wrk(out)
    answered = sum(n for label, n in result.statuses.items() if label != "200")
    unexpected = sum(n for label, n in result.statuses.items() if label not in EXPECTED)
    unexpected -= result.statuses.get("200", 0)
    return replace(result, errors=unexpected + len(order) - answered), timeline


# --- Waiting for the worker, and reading tickets back -----------------------------------------

TICKETS_BY_STATUS = (
    "SELECT status, count(*) FROM orders_checkoutticket WHERE gate_sku_id = %s GROUP BY status"
)
SAMPLE = (
    "SELECT id, user_id, status FROM orders_checkoutticket WHERE gate_sku_id = %s"
    " ORDER BY random() LIMIT %s"
)


def settle(databases: dict[str, dict], sku_id: int, *, admitted: int, timeout: float) -> dict:
    """Poll the order shards until every ticket of the SKU is resolved (accepted or rejected)
    and there are as many as were admitted, or ``timeout`` seconds pass. Returns the last counts
    and a sample of tickets (id, user id, status)."""
    conns = list(connect_all(databases, shards_only=True).values())
    began = time.monotonic()
    try:
        while True:
            counts: Counter[str] = Counter()
            for conn in conns:
                counts.update(dict(conn.execute(TICKETS_BY_STATUS, [sku_id]).fetchall()))
            settled = not counts["queued"] and counts.total() >= admitted
            if settled or time.monotonic() - began > timeout:
                break
            time.sleep(0.25)
        sample = [row for conn in conns for row in conn.execute(SAMPLE, [sku_id, SAMPLE_TICKETS])]
    finally:
        for conn in conns:
            conn.close()
    return {
        "settled": settled,
        "waited_s": time.monotonic() - began,
        "counts": dict(counts),
        "sample": random.sample(sample, min(len(sample), SAMPLE_TICKETS)),
    }


def poll_tickets(base: str, sample: list, tokens: dict[int, str]) -> Counter[str]:
    """GET each sampled ticket as its buyer; counts answers that agree with the database."""
    seen: Counter[str] = Counter()
    for ticket_id, user_id, status in sample:
        request = urllib.request.Request(
            base + TICKET_API.format(ticket=ticket_id),
            headers={"Authorization": f"Token {tokens[user_id]}"},
        )
        try:  # base is the local gunicorn this benchmark started (http://127.0.0.1:<port>)
            with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310
                answer = json.loads(response.read())
        except (urllib.error.URLError, ValueError) as exc:
            seen[f"error {type(exc).__name__}"] += 1
            continue
        agrees = answer.get("status") == status and answer.get("ticket") == str(ticket_id)
        seen["agrees" if agrees else f"differs: {answer}"] += 1
    return seen


def broker_queues(broker: str, queues: list[str]) -> dict[str, dict[str, int]]:
    """Ready messages and consumers of each queue (those that exist) on the broker."""
    from kombu import Connection

    found = {}
    with Connection(broker, connect_timeout=3) as connection:
        channel = connection.channel()
        for queue in queues:
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
            except Exception:  # noqa: BLE001 - no such queue (the channel is closed with it)
                channel = connection.channel()
                continue
            found[queue] = {"messages": messages, "consumers": consumers}
    return found


def queues_drained(broker: str, queues: list[str], *, timeout: float = 120.0) -> str:
    """Wait until the broker holds no ready message in ``queues`` (then a moment more, for
    the worker to finish the ones it took); says how long that took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if not any(q["messages"] for q in broker_queues(broker, queues).values()):
            time.sleep(1.0)  # the worker's prefetched messages (concurrency 2)
            return f"worker idle: its queues drained in {time.monotonic() - began:.1f} s"
        time.sleep(0.2)
    return f"WARNING: the worker's queues still hold messages after {timeout:.0f} s"


# --- Report -------------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def _since(moment: float | None, began: float) -> float | None:
    return None if moment is None else moment - began


def verdicts(verified: dict, units: int, limit: int, settled: dict) -> list[str]:
    """What went wrong, if anything (an empty list: the run is correct)."""
    failures = []
    for kind, v in verified.items():
        if v["live_lines"] != units:
            failures.append(f"{kind}: {v['live_lines']} orders accepted, not {units}")
        if v["units"] > units:
            failures.append(f"{kind}: oversold by {v['units'] - units} units")
        if (v["stock"] or {}).get("available", 0) < 0:
            failures.append(f"{kind}: negative stock")
    if verified["flash"]["most_per_buyer"] > limit:
        failures.append(f"flash: a buyer holds {verified['flash']['most_per_buyer']} > {limit}")
    if not settled["settled"]:
        failures.append(f"flash: tickets not all resolved: {settled['counts']}")
    return failures


def print_summary(flash: Timeline, plain: Timeline, verified: dict, settled: dict) -> None:
    f = verified["flash"]
    # Without the plain path's run (--no-plain) its column says "-".
    p = verified.get("plain") or {
        "live_lines": "-", "oversell": "-", "buyers": "-", "most_per_buyer": "-",
        "stock": dict.fromkeys(("received", "available", "reserved", "sold"), "-"),
        "last_written": None,
    }  # fmt: skip
    tickets = f["tickets"]
    rejected = sum(n for label, n in tickets.items() if label.startswith("rejected"))
    rows = [
        ("orders accepted (live order lines)", f["live_lines"], p["live_lines"]),
        ("oversell (units sold - units on sale)", f["oversell"], p["oversell"]),
        ("buyers served / most units per buyer",
         f"{f['buyers']} / {f['most_per_buyer']}", f"{p['buyers']} / {p['most_per_buyer']}"),
        ("stock received/available/reserved/sold",
         "/".join(str(f["stock"][k]) for k in ("received", "available", "reserved", "sold")),
         "/".join(str(p["stock"][k]) for k in ("received", "available", "reserved", "sold"))),
        ("sold out: first out_of_stock answer",
         _s(flash.after("409 out_of_stock")), _s(plain.after("409 out_of_stock"))),
        ("last attempt admitted (202) / ordered (201)",
         _s(flash.after("202", "last")), _s(plain.after("201", "last"))),
        ("all tickets resolved (database)", _s(_since(f["last_resolved"], flash.began)), "-"),
        ("all orders written (database)",
         _s(_since(f["last_written"], flash.began)), _s(_since(p["last_written"], plain.began))),
        ("tickets accepted / rejected / pending",
         f"{tickets.get('accepted', 0)} / {rejected} / {tickets.get('queued', 0)}", "-"),
    ]  # fmt: skip
    print(f"\n{'(times from the first attempt)':<44}{'flash sale (gate)':>20}{'plain DB path':>16}")
    for label, flash_value, plain_value in rows:
        print(f"{label:<44}{flash_value!s:>20}{plain_value!s:>16}")
    if rejected:
        print(f"  rejected tickets: {json.dumps(tickets, sort_keys=True)}")
    if not settled["settled"]:
        print(f"  NOT RESOLVED after {settled['waited_s']:.0f} s: {settled['counts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="of the trivial view's load")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--attempts-each", type=int, default=10, help="purchase attempts per buyer")
    parser.add_argument("--units", type=int, default=1000, help="units of each SKU")
    parser.add_argument("--per-user-limit", type=int, default=2, help="the sale's, per buyer")
    parser.add_argument("--settle-timeout", type=float, default=180, help="seconds for the worker")
    parser.add_argument("--seed", type=int, default=1, help="of the attempts' shuffled order")
    parser.add_argument(
        "--after", type=int, default=30_000, help="attempts sent once the sale is sold out"
    )
    parser.add_argument(
        "--no-plain", action="store_true", help="skip the plain database path's comparison"
    )
    args = parser.parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    began = time.monotonic()
    load_before = os.getloadavg()
    run = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]

    env = bench_env()
    print(f"run {run}; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    print("preparing: migrate, seed, buyers and tokens, SKUs, rate limits ...", flush=True)
    manage("migrate_all", env=env)
    print(
        manage(
            "seed_demo", "--products", str(args.products), "--users", "1",
            "--password", PASSWORD, env=env,
        ).strip().splitlines()[0]
    )  # fmt: skip
    spec = {"run": run, "users": args.users, "units": args.units}
    data = shell_json("bench.flash_sale", "shell_prepare", json.dumps(spec), env=env)
    codes = [sku["code"] for sku in data["skus"].values()]
    print(f"  {databases_vacuumed(data['databases'])}", flush=True)
    try:
        report = _run(args, env, data, run)
    finally:
        spec = {"previous_limits": data["previous_limits"], "codes": codes}
        try:
            shell_json("bench.flash_sale", "shell_cleanup", json.dumps(spec), env=env)
            print("rate limits restored; the run's sale ended and its SKUs deactivated")
        except SystemExit as exc:  # say so, without hiding why the run itself stopped
            print(f"WARNING: clean-up failed, the rate limits may still be open: {exc}")

    path = save("flash_sale", {**report, "args": vars(args), "command": command, "run": run,
                               "load_average_before": load_before,
                               "load_average_after": os.getloadavg()})  # fmt: skip
    print(f"command: {command}")
    print(f"raw results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    same, flash, after = report["trivial_same_requests"], report["flash"], report["after_sell_out"]
    baseline = "minimal Django view sent the same requests, same worker model"
    summary_rows(
        [
            summary_row(f"flash-sale admission, whole sale "
                        f"({args.users * args.attempts_each} attempts)", flash,
                        baseline=baseline, baseline_rps=same.rps, target=0.5),
            *([summary_row(f"flash-sale refusals after sell-out ({args.after} attempts)", after,
                           baseline=baseline, baseline_rps=same.rps, target=0.8)]
               if after else []),
        ]
    )  # fmt: skip
    held = audit(env)
    load_after = os.getloadavg()
    print(f"load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"wall time: {time.monotonic() - began:.0f} s")
    if report["failures"] or not held:
        raise SystemExit(1)


def _run(args: argparse.Namespace, env: dict[str, str], data: dict, run: str) -> dict:
    skus, buyers = data["skus"], data["buyers"]
    tokens = [buyer["token"] for buyer in buyers]
    print(
        f"  {len(buyers)} buyers with tokens; SKUs "
        f"{skus['flash']['code']} (sale: {args.units} units, at most {args.per_user_limit} per "
        f"buyer), {skus['plain']['code']} ({args.units} units, no sale); "
        f"{data['sales_ended']} leftover bench sales ended",
        flush=True,
    )
    limits = ", ".join(f"{name} {rate}/{period:g} s" for name, (rate, period, _) in
                       data["default_limits"].items())  # fmt: skip
    print(
        f"  rate limits opened for the run (defaults: {limits}): every layer still checked on "
        f"each request, none refusing; the sale's per-buyer limit stays",
        flush=True,
    )
    queues = broker_queues(env["CELERY_BROKER_URL"], data["queues"])
    busy = {name: q for name, q in queues.items() if q["consumers"] or q["messages"]}
    if busy:
        print(f"  WARNING: the broker's queues are in use before the run: {json.dumps(busy)}")
    order = attempt_order(len(buyers), args.attempts_each, args.seed)
    warm_order = random.Random(args.seed + 1).choices(range(1, len(buyers) + 1), k=WARM_ATTEMPTS)
    runs = {"connections": args.connections, "tokens": tokens}

    with (
        tempfile.TemporaryDirectory(prefix="bench-flash-") as tmp,
        celery_worker(env, queues=data["queues"], log=Path(tmp) / "worker.log"),
        gunicorn(env, workers=WORKERS, threads=THREADS, log=Path(tmp) / "gunicorn.log") as base,
        minimal_gunicorn(env, workers=WORKERS, threads=THREADS) as minimal,
    ):
        print("  celery worker and gunicorn up; warming up the checkout path ...", flush=True)
        warm, _ = attempts("warm-up", base, Path(tmp), order=warm_order, sku=skus["warm"]["code"],
                           prefix=f"warm-{run}", **runs)  # fmt: skip
        print(f"  warm-up: {json.dumps(warm.statuses, sort_keys=True)}", flush=True)
        # The warm-up's orders queue notifications for the worker: measuring the baseline while
        # it works them off would lend the baseline's cores to the worker (seen: 1,900 req/s
        # then, 4,400 after the sale).
        print(f"  {queues_drained(env['CELERY_BROKER_URL'], data['queues'])}", flush=True)
        # Every buyer keeps trying once it is gone: the attempts after the sell-out.
        after_order = random.Random(args.seed + 2).choices(range(1, len(buyers) + 1),
                                                           k=args.after)  # fmt: skip
        print("  will load: the minimal Django view (same worker model)", flush=True)
        trivial = load("minimal Django view", minimal + "/healthz", seconds=args.seconds,
                       connections=args.connections)  # fmt: skip

        def same_requests(when: str) -> LoadResult:
            """The baseline of the targets: the minimal view sent the very requests of the sale
            (same script, bodies and headers), so parsing and generating them (wrk's Lua builds
            each one and reads each answer) cost the baseline what they cost us. Measured before
            the sale and after the sell-out phase: their mean evens out the machine's drift."""
            same, _ = attempts(f"minimal view, the same requests ({when})", minimal, Path(tmp),
                               order=after_order, sku=skus["flash"]["code"],
                               prefix=f"minimal-{when}-{run}", **runs)  # fmt: skip
            return replace(same, errors=max(0, len(after_order) - same.statuses.get("200", 0)))

        same_before = same_requests("before")
        sale = manage(
            "start_flash_sale", "--sku", skus["flash"]["code"], "--stock", str(args.units),
            "--per-user-limit", str(args.per_user_limit), env=env,
        )  # fmt: skip
        print(f"  {sale.strip().splitlines()[-1]}", flush=True)
        time.sleep(data["flash_list_ttl"] + 0.5)  # every web process sees the sale by now
        print(f"  will load: flash sale, {len(order)} attempts", flush=True)
        flash, flash_times = attempts(
            f"flash sale: {len(order)} attempts (gate)", base, Path(tmp), order=order,
            sku=skus["flash"]["code"], prefix=f"flash-{run}", **runs,
        )  # fmt: skip
        print("  waiting for the worker to resolve the admitted tickets ...", flush=True)
        admitted = flash.statuses.get("202", 0)
        settled = settle(
            data["databases"], skus["flash"]["id"], admitted=admitted, timeout=args.settle_timeout
        )
        polled = poll_tickets(base, settled["sample"], {b["id"]: b["token"] for b in buyers})
        # Every buyer keeps trying once it is gone: what a refusal after the sell-out costs --
        # measured once the worker has turned the tickets into orders, so that, like the
        # minimal view's, the load has the machine's cores to itself (the whole sale's rate
        # includes the worker's share).
        print(f"  will load: {len(after_order)} attempts after the sell-out", flush=True)
        after, _ = attempts(
            f"after sell-out: {len(after_order)} refusals", base, Path(tmp), order=after_order,
            sku=skus["flash"]["code"], prefix=f"after-{run}", **runs,
        )  # fmt: skip
        print("  will load: the minimal Django view again, the same requests", flush=True)
        same_after = same_requests("after")
        same = load_mean("minimal view, the same requests (mean)", same_before, same_after)
        if args.no_plain:
            plain, plain_times = None, Timeline()
        else:
            print(f"  will load: plain database path, {len(order)} attempts", flush=True)
            plain, plain_times = attempts(
                f"plain DB path: {len(order)} attempts", base, Path(tmp), order=order,
                sku=skus["plain"]["code"], prefix=f"plain-{run}", **runs,
            )  # fmt: skip
        worker_log = (Path(tmp) / "worker.log").read_text(errors="replace")
        web_log = (Path(tmp) / "gunicorn.log").read_text(errors="replace")
    left = broker_queues(env["CELERY_BROKER_URL"], data["queues"])

    verified = shell_json(
        "bench.flash_sale", "shell_verify",
        json.dumps({"flash": skus["flash"]["id"], "plain": skus["plain"]["id"]}), env=env,
    )  # fmt: skip
    if args.no_plain:
        verified.pop("plain")
    for v in verified.values():
        v["oversell"] = v["units"] - args.units
    failures = verdicts(verified, args.units, args.per_user_limit, settled)
    accepted = verified["flash"]["tickets"].get("accepted", 0) + flash.statuses.get("201", 0)
    if accepted != verified["flash"]["live_lines"]:
        failures.append(
            f"flash: {accepted} tickets accepted (+ direct 201s) but "
            f"{verified['flash']['live_lines']} live order lines"
        )
    if sum(polled.values()) != polled["agrees"]:
        failures.append(f"tickets read over HTTP disagree with the database: {dict(polled)}")
    worker_errors = [line for line in worker_log.splitlines() if " ERROR/" in line]
    # the shop logs every 4xx answer as a WARNING ("Conflict" for a 409): count, do not show
    web_lines = Counter(
        "409 warnings" if "Conflict: /api/v1/orders/" in line else
        "errors" if "ERROR" in line or line.startswith("Traceback") else "other"
        for line in web_log.splitlines()
    )  # fmt: skip

    measured = [(flash, flash_times), (after, None)] + ([(plain, plain_times)] if plain else [])
    print_table([(trivial, trivial), (same_before, same), (same_after, same), (same, same)]
                + [(result, same) for result, _ in measured], ratio_label="x same")  # fmt: skip
    for result, timeline in measured:
        if timeline is None:
            print(f"  {result.name}: {json.dumps(result.statuses, sort_keys=True)}")
            continue
        extra = f" (+{timeline.extra} GET /healthz after socket errors)" if timeline.extra else ""
        extra += f" ({timeline.socket_errors})" if timeline.socket_errors else ""
        print(f"  {result.name}: {json.dumps(result.statuses, sort_keys=True)}{extra}")
    print(
        "  (errors: answers other than 201, 202, 409 out_of_stock or purchase_limit_exceeded,"
        " and attempts without an answer)"
    )
    print()
    for result, what, target in ((flash, "the whole sale", 0.5), (after, "refusals after the "
                                  "sell-out", 0.8), (plain, "plain DB path", None)):  # fmt: skip
        if result is None:
            continue
        ratio = result.rps / same.rps
        verdict = (
            f" (target >= {target}x: {'met' if ratio >= target else 'MISSED'})" if target else ""
        )
        print(
            f"{what} vs the minimal Django view sent the same requests: {ratio:.2f}x the "
            f"requests/s{verdict}, p50 {result.p50_ms / same.p50_ms:.2f}x, "
            f"p99 {result.p99_ms / same.p99_ms:.2f}x, errors {result.errors} "
            f"(vs its GET /healthz: {result.rps / trivial.rps:.2f}x)"
        )
    print_summary(flash_times, plain_times, verified, settled)
    print(
        f"  tickets read back over HTTP as their buyers: {sum(polled.values())}, "
        f"{polled['agrees']} agree with the database; worker errors logged: {len(worker_errors)};"
        f" gunicorn log lines: {json.dumps(web_lines, sort_keys=True)}"
    )
    for line in worker_errors[:5]:
        print(f"    {line[:200]}")
    waiting = {name: q["messages"] for name, q in left.items() if q["messages"]}
    if waiting:
        print(f"  left in the broker's queues after the run: {json.dumps(waiting)}")
    print(
        f"\n{'CORRECT' if not failures else 'FAILED: ' + '; '.join(failures)}: "
        f"{verified['flash']['live_lines']} flash orders, oversell {verified['flash']['oversell']};"
        f" {args.connections} connections, {web_model_text(env)}, 1 celery worker "
        f"(concurrency 2), load tool {flash.tool}"
    )
    return {
        "trivial": trivial,
        "trivial_same_requests": same,
        "trivial_same_requests_runs": [same_before, same_after],
        "flash": flash,
        "plain": plain,
        "after_sell_out": after,
        "warm_up": warm,
        "timelines": {"flash": flash_times, "plain": plain_times},
        "verified": verified,
        "settled": {k: v for k, v in settled.items() if k != "sample"},
        "polled": dict(polled),
        "broker_before": queues,
        "broker_after": left,
        "worker_errors": worker_errors[:50],
        "web_log_lines": web_lines,
        "web_log_errors": [line for line in web_log.splitlines() if "ERROR" in line][:50],
        "failures": failures,
    }


if __name__ == "__main__":
    main()
