"""Schema fuzzing: every operation of the live OpenAPI schema, sent as an anonymous client, a
buyer and an operator to a real server (pytest-django's live server on the services
profile), with data that fits the schema and data that does not (schemathesis, positive and
negative modes, its examples, coverage and fuzzing phases).

Every answer must be no server error, a status the operation documents, a body and headers
that match what it documents for that status. Where an answer is right and the schema wrong,
the fix is the schema (shop/api_schema.py documents every operation's errors), never the check.

Bounds (docs/security-testing.md): ``SCHEMA_FUZZ_MAX_EXAMPLES`` generated examples per
operation, principal and mode (default 25; ``make fuzz`` runs 200), and
``SCHEMA_FUZZ_TIME_BUDGET`` seconds for the whole module (default 240): once spent, the
remaining examples are generated but not sent, and the summary says how many. The seed is
``SCHEMA_FUZZ_SEED`` (default 11), so a run is repeatable as far as the server's own state
allows.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.management import call_command
from django.db import connections
from django.test.utils import override_settings
from drf_spectacular.renderers import OpenApiJsonRenderer
from drf_spectacular.views import SpectacularAPIView
from pytest_django.live_server_helper import LiveServer
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.payments.services.channels import channels_ensure_sandbox
from apps.payments.services.webhooks import channel_webhook_secret, webhook_signature
from shop.api_schema import IDEMPOTENCY_KEY_SCHEMA
from shop.idempotency import HEADER as IDEMPOTENCY_HEADER
from shop.runtime import runtime_refresh
from tests.factories.users import UserFactory
from tests.payments.acquirer_process import SandboxAcquirer
from tests.security.conftest import (
    buyer_holdings,
    open_rate_limits,
    operator_user,
    restore_rate_limits,
    stocked_sku,
    token_for,
)

MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_MAX_EXAMPLES", "25"))
TIME_BUDGET = float(os.environ.get("SCHEMA_FUZZ_TIME_BUDGET", "240"))
SEED = int(os.environ.get("SCHEMA_FUZZ_SEED", "11"))
PRINCIPALS = ("anonymous", "buyer", "operator")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
VALID_KEY = re.compile(IDEMPOTENCY_KEY_SCHEMA["pattern"])
SANDBOX_CHANNELS = ["alpha", "beta", "gamma"]
# Values that broke parsers before (fuzz dictionaries): mixed into generated integers and
# strings (path, query, header and the bodies' numbers) a fifth of the time, in whichever
# generation mode they fit. No leading blanks: HTTP clients refuse to send those in a header.
HOSTILE_INTEGERS = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 10**18, 10**30, -(2**63) - 1]
HOSTILE_STRINGS = [
    "²", "¹²³", "9" * 5000, "9223372036854775808", "-1", "0", "1e309", "NaN", "1 ",
    "' OR '1'='1", "../../etc/passwd", "%00", "{{7*7}}", "Token ", "sha256=",
]  # fmt: skip
HOSTILE = 0.2

pytestmark = [
    pytest.mark.needs_postgres,
    pytest.mark.needs_redis,
    # The tests only read (the server writes, on its own connections): plain, not
    # transactional; the module's world is committed and flushed by fuzz_world itself.
    pytest.mark.django_db(databases="__all__"),
]


# --- What was sent and what came back, for the summary (tests/security/conftest.py) --------


@dataclass
class FuzzStats:
    started: float | None = None
    sent: collections.Counter = field(default_factory=collections.Counter)
    unsent: collections.Counter = field(default_factory=collections.Counter)
    statuses: dict[tuple[str, str], collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    failures: dict[tuple[str, str], list[str]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )

    def budget_left(self) -> bool:
        if self.started is None:
            self.started = time.monotonic()
        return time.monotonic() - self.started < TIME_BUDGET

    def summary(self) -> list[str]:
        operations = sorted({label for _, label in self.statuses} | {k[1] for k in self.unsent})
        principals = sorted({p for p, _ in self.statuses} | {k[0] for k in self.unsent})
        lines = [
            f"schema fuzz: {len(operations)} operations x {len(principals)} principals "
            f"({', '.join(principals)}), seed {SEED}, max examples {MAX_EXAMPLES}, "
            f"time budget {TIME_BUDGET:g} s",
            f"  requests sent: {sum(self.sent.values())}; generated but not sent (time budget "
            f"spent): {sum(self.unsent.values())}; failing (operation, principal) pairs: "
            f"{len(self.failures)}",
        ]
        for operation in operations:
            cells = []
            for principal in principals:
                statuses = self.statuses.get((principal, operation), {})
                mark = " FAILED" if (principal, operation) in self.failures else ""
                spread = " ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))
                cells.append(f"{principal}: {self.sent[(principal, operation)]} [{spread}]{mark}")
            lines.append(f"  {operation}: " + "; ".join(cells))
        for (principal, operation), problems in sorted(self.failures.items()):
            for problem in sorted(set(problems)):
                lines.append(f"  FAILURE {operation} as {principal}: {problem}")
        return lines


STATS = FuzzStats()


# --- The server, its data and its limits ---------------------------------------------------
#
# Built once for the module, not per test: 45 tests each flushing three databases and
# rebuilding orders would spend more time on that than on fuzzing. The tests share the world
# (what one operation's examples cancel or pay, the next meets) and the module leaves every
# database flushed, as a transactional test does.


@dataclass
class Principal:
    name: str
    token: str | None
    # Ids the fuzzer substitutes for small generated ones, so that operations reach real rows
    # (the caller's own, and for the operator a buyer's too) and not only 404.
    order_ids: list[int]
    ticket_ids: list[int]


@dataclass
class FuzzWorld:
    url: str
    principals: dict[str, Principal]
    sku_codes: list[str]
    product_ids: list[int]
    category_slugs: list[str]
    keys: itertools.count = field(default_factory=lambda: itertools.count(1))
    # Loopback only: no HTTP(S)_PROXY from the environment between the fuzzer and the server.
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = False
        # One request per connection: the server's thread closes its database connections
        # when the connection closes, so none is left open when the module ends.
        self.session.headers["Connection"] = "close"


def _build_world(url: str) -> FuzzWorld:
    channels_ensure_sandbox()
    skus = [stocked_sku(stock=500) for _ in range(2)]
    codes = [sku.code for sku in skus]
    buyer = UserFactory(username="fuzz-buyer")
    buyer_has = buyer_holdings(buyer, codes[0], extra_pending=6)
    operator = operator_user("fuzz-operator")
    operator_has = buyer_holdings(operator, codes[1], extra_pending=2)
    buyer_orders, operator_orders = buyer_has.order_ids(), operator_has.order_ids()
    return FuzzWorld(
        url=url,
        principals={
            "anonymous": Principal("anonymous", None, buyer_orders, [buyer_has.ticket.id]),
            "buyer": Principal("buyer", token_for(buyer), buyer_orders, [buyer_has.ticket.id]),
            "operator": Principal(
                "operator",
                token_for(operator),
                buyer_orders + operator_orders,
                [buyer_has.ticket.id, operator_has.ticket.id],
            ),
        },
        sku_codes=codes,
        product_ids=[sku.product_id for sku in skus],
        category_slugs=[sku.product.category.slug for sku in skus],
    )


def _flush_every_database() -> None:
    """What a transactional test does when it ends (django.test.TransactionTestCase)."""
    for alias in connections:
        call_command("flush", verbosity=0, interactive=False, database=alias)


@pytest.fixture(scope="module")
def fuzz_world(django_db_setup, django_db_blocker):
    """A real server (pytest-django's live server thread) on the test databases, the sandbox
    acquirer as a real process (card payments and refunds reach a bank), buyers and an
    operator with orders in every state, and the rate limits opened -- all put back after."""
    acquirer = SandboxAcquirer(secret=django_settings.ACQUIRER_WEBHOOK_SECRET, seed=SEED).start()
    acquirer_setting = override_settings(ACQUIRER_URL=acquirer.url)
    acquirer_setting.enable()
    server = LiveServer("localhost")
    server._live_server_modified_settings.enable()
    world = None
    try:
        with django_db_blocker.unblock():
            cache.clear()  # what earlier runs cached under the same SKU codes
            try:
                previous_limits = open_rate_limits()
                world = _build_world(server.url)
                live = world.session.get(f"{server.url}/api/schema/?format=json", timeout=30)
                served = live.json()
                assert served == SERVED, "the live schema is not the one the tests were made from"
                yield world
                restore_rate_limits(previous_limits)
            finally:
                if world is not None:
                    world.session.close()
                _flush_every_database()
    finally:
        server._live_server_modified_settings.disable()
        server.stop()
        acquirer_setting.disable()
        acquirer.close()


@pytest.fixture
def fuzz_server(fuzz_world, _fresh_cache, django_db_blocker) -> Iterator[str]:
    """The server's base URL, with database access for its thread during the test, and the
    opened rate limits in force again (the suite's _fresh_cache puts the defaults back)."""
    with django_db_blocker.unblock():
        runtime_refresh()
        yield fuzz_world.url


def _served_schema() -> dict[str, Any]:
    """The document /api/schema/ serves, built the way SpectacularAPIView builds it (the
    tests are made from it at collection time, before any server runs; the live server's copy
    is compared with it before fuzzing)."""
    generator = SpectacularAPIView.generator_class(
        urlconf=SpectacularAPIView.urlconf, api_version=SpectacularAPIView.api_version
    )
    document = generator.get_schema(request=None, public=SpectacularAPIView.serve_public)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


SERVED = _served_schema()
schema = schemathesis.openapi.from_dict(
    SERVED,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",  # positive and negative data
                "max-examples": MAX_EXAMPLES,
                "database": "none",  # no example database: every run starts from the seed
                "dictionaries": {
                    "integer": {"dictionary": "hostile-integers", "probability": HOSTILE},
                    "string": {"dictionary": "hostile-strings", "probability": HOSTILE},
                },
            },
            "dictionaries": {
                "hostile-integers": {"values": HOSTILE_INTEGERS},
                "hostile-strings": {"values": HOSTILE_STRINGS},
            },
            "parameters": {
                f"body.{path}": {"dictionary": "hostile-integers", "probability": HOSTILE}
                for path in ("amount", "items[*].quantity")
            },
        }
    ),
)


# --- Steering generated values towards real rows --------------------------------------------


def _pick(pool: list[Any], value: Any) -> Any:
    """A real value from ``pool`` for most small generated values, the generated one
    otherwise (large or odd values stay: they are the interesting ones); deterministic in the
    generated value, so shrinking still shrinks."""
    if not pool or isinstance(value, bool) or not isinstance(value, int | str):
        return value
    if isinstance(value, str):
        number = int(value) if value.isascii() and value.isdigit() and len(value) < 4 else None
        number = len(value) if number is None and len(value) < 20 else number
    else:
        number = value if 0 <= value < 1000 else None
    if number is None:
        return value
    index = number % (len(pool) + 1)
    if index == len(pool):
        return value
    chosen = pool[index]
    return str(chosen) if isinstance(value, str) else chosen


def _steer(case: schemathesis.Case, world: FuzzWorld, principal: Principal) -> None:
    """Point ids, SKU codes and channels at real ones some of the time, and give every
    well-formed Idempotency-Key a fresh value (a key the generator repeats would only meet
    its own replay). Malformed keys stay as generated: they must be answered 400."""
    pools = {
        "order_id": principal.order_ids,
        "ticket_id": principal.ticket_ids,
        "product_id": world.product_ids,
        "slug": world.category_slugs,
        "channel": SANDBOX_CHANNELS,
    }
    for name, value in list((case.path_parameters or {}).items()):
        if name in pools:
            case.path_parameters[name] = _pick(pools[name], value)
    if isinstance(case.query, dict) and isinstance(case.query.get("category"), str):
        case.query["category"] = _pick(world.category_slugs, case.query["category"])
    body = case.body
    if isinstance(body, dict):
        if isinstance(body.get("items"), list):
            for item in body["items"]:
                if isinstance(item, dict) and isinstance(item.get("sku"), str):
                    item["sku"] = _pick(world.sku_codes, item["sku"])
        if isinstance(body.get("channel"), str):
            body["channel"] = _pick(SANDBOX_CHANNELS, body["channel"])
    key = case.headers.get(IDEMPOTENCY_HEADER) if case.headers else None
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        case.headers[IDEMPOTENCY_HEADER] = f"fuzz-{principal.name}-{next(world.keys)}"
    if principal.token is not None:
        case.headers["Authorization"] = f"Token {principal.token}"


def _signed_webhook(case: schemathesis.Case) -> dict[str, Any]:
    """For a webhook to a real channel whose generated headers look like a signature, sign
    the generated body for real (fresh timestamp): the body then reaches the parser behind
    the signature check. Returns extra call arguments (the exact bytes signed)."""
    channel = (case.path_parameters or {}).get("channel")
    signature = case.headers.get("X-Acquirer-Signature") if case.headers else None
    if channel not in SANDBOX_CHANNELS or not isinstance(signature, str):
        return {}
    if len(signature) % 2:  # half of them: the forged ones stay forged
        return {}
    if case.media_type != "application/json" or case.body is None:
        return {}
    try:
        raw = json.dumps(case.body).encode()
    except (TypeError, ValueError):
        return {}
    timestamp = str(int(time.time()))
    case.headers["X-Acquirer-Timestamp"] = timestamp
    case.headers["X-Acquirer-Signature"] = webhook_signature(
        secret=channel_webhook_secret(channel), timestamp=timestamp, body=raw
    )
    return {"data": raw}


# --- The test -------------------------------------------------------------------------------


@pytest.mark.parametrize("principal_name", PRINCIPALS)
@schema.parametrize()
# The world (users, orders, the server) is built once for the module, not per example: examples
# meet the state earlier ones left (an order paid, cancelled, refunded), on purpose.
@hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture], deadline=None
)
def test_every_operation_answers_within_its_schema(case, principal_name, fuzz_world, fuzz_server):
    cell = (principal_name, case.operation.label)
    if not STATS.budget_left():
        STATS.unsent[cell] += 1
        return
    _steer(case, fuzz_world, fuzz_world.principals[principal_name])
    extra = _signed_webhook(case) if case.path.endswith("/webhooks/{channel}/") else {}
    STATS.sent[cell] += 1
    try:
        response = case.call(base_url=fuzz_server, session=fuzz_world.session, timeout=30, **extra)
    except Exception as exc:  # the server hung up or timed out: a failure too
        STATS.failures[cell].append(f"{type(exc).__name__}: {exc} <- {_request(case)}")
        raise
    STATS.statuses[cell][response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        for failure in group.exceptions:
            STATS.failures[cell].append(
                f"{failure.title} ({response.status_code}) <- {_request(case)}"
            )
        raise


def _request(case: schemathesis.Case) -> str:
    """The request, short enough for a summary line (the test's own report has it whole)."""
    text = case.as_curl_command()
    return text if len(text) <= 400 else text[:400] + "..."
