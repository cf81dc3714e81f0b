"""Settings for every profile. ``test.py`` and ``production.py`` only override.

Everything is read from environment variables (see ``.env.example``). With none set, this is
the *embedded default*: SQLite files under ``var/``, a local-memory cache and eager Celery, so a
newcomer needs nothing but Python. Setting DATABASE_URL / ORDER_SHARD_URLS / REDIS_URL /
CELERY_BROKER_URL selects the *services profile* (PostgreSQL, Redis, RabbitMQ).
"""

from __future__ import annotations

import os
from pathlib import Path

from celery.schedules import crontab

from config.env import default_shard_map, env, parse_shard_map, shard_aliases

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(env("SHOP_VAR_DIR", default=str(BASE_DIR / "var")))

# A key that is obviously for development; production.py refuses to start with it.
DEV_SECRET_KEY = "django-insecure-shop-development-key-never-use-in-production"  # noqa: S105
SECRET_KEY = env("SECRET_KEY", default=DEV_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=True)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "shop",
    "apps.users",
    "apps.catalog",
    "apps.inventory",
    "apps.flashsales",
    "apps.orders",
    "apps.payments",
    "apps.reconciliation",
    "apps.console",
]

MIDDLEWARE = [
    # First: every line logged while answering, a 429 or 503 from the layers below included,
    # carries the request id (shop.logs).
    "shop.logs.RequestIdMiddleware",
    # Every request is counted and timed, refusals by later middleware included.
    "shop.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A write a view answers without remote work (a sold-out flash sale's refusals): answered
    # here, before the rest of the stack (shop.early).
    "shop.early.EarlyAnswerMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Before sessions and auth: a shared page for an anonymous reader is answered here.
    "shop.pagecache.PageCacheMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Rate-limit layers and the read-only switch, once the view is known (shop.throttle).
    "shop.throttle.ThrottleMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, so it sees exceptions from every view: ShopError and "database unavailable"
    # become the API error body or a friendly page, never a stack trace.
    "shop.errors.ShopErrorMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.catalog.context_processors.storefront",
                "shop.context_processors.switches",
            ],
        },
    },
]

# --- Databases -----------------------------------------------------------------------------
# `default` holds users, catalog, inventory, ledger, reconciliation. Orders live on the order
# shards `orders_0 … orders_{N-1}`, one per URL in ORDER_SHARD_URLS.
EMBEDDED_ORDER_SHARDS = 2  # two SQLite shard files, so sharding is exercised even in dev
# Seconds a PostgreSQL connection attempt may take: /readyz and requests fail fast (503)
# instead of hanging a worker when a database host is unreachable.
DB_CONNECT_TIMEOUT = env.int("DB_CONNECT_TIMEOUT", default=3)
# Persistent connections: a sale's request rate would otherwise pay a connect per request.
DB_CONN_MAX_AGE = env.int("DB_CONN_MAX_AGE", default=60)


def _database(url: str) -> dict:
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["OPTIONS"] = {
            # WAL lets readers proceed during a write; IMMEDIATE takes the write lock at BEGIN so
            # concurrent writers queue (up to `timeout`) instead of failing with "locked".
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    else:
        config.setdefault("OPTIONS", {})["connect_timeout"] = DB_CONNECT_TIMEOUT
        config["CONN_MAX_AGE"] = DB_CONN_MAX_AGE
        config["CONN_HEALTH_CHECKS"] = True
    return config


DATABASE_URL = env("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'default.sqlite3'}"
ORDER_SHARD_URLS = env.list("ORDER_SHARD_URLS", default=[]) or [
    f"sqlite:///{VAR_DIR / f'orders_{i}.sqlite3'}" for i in range(EMBEDDED_ORDER_SHARDS)
]
ORDER_SHARD_ALIASES = shard_aliases(len(ORDER_SHARD_URLS))
DATABASES = {"default": _database(DATABASE_URL)}
for _alias, _url in zip(ORDER_SHARD_ALIASES, ORDER_SHARD_URLS, strict=True):
    DATABASES[_alias] = _database(_url)

# Logical shards are fixed for the life of the data: order ids carry their logical shard.
# 64 gives room to spread over up to 64 PostgreSQL servers without ever rehashing.
LOGICAL_SHARD_COUNT = env.int("LOGICAL_SHARD_COUNT", default=64)
# Where each logical shard lives, e.g. "0-31=orders_0,32-63=orders_1". Unset: contiguous ranges
# over the configured aliases. Pin it explicitly before adding shards to a live system.
ORDER_SHARD_MAP_SPEC = env("ORDER_SHARD_MAP", default="")
ORDER_SHARD_MAP = (
    parse_shard_map(ORDER_SHARD_MAP_SPEC, LOGICAL_SHARD_COUNT, ORDER_SHARD_ALIASES)
    if ORDER_SHARD_MAP_SPEC
    else default_shard_map(LOGICAL_SHARD_COUNT, ORDER_SHARD_ALIASES)
)
DATABASE_ROUTERS = ["shop.sharding.router.ShardRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="")
# Redis answers in well under a millisecond; half a second means it is sick. Failing fast lets
# the catalog fall back to the database instead of stalling every worker.
CACHE_SOCKET_TIMEOUT = env.float("CACHE_SOCKET_TIMEOUT", default=0.5)
# Bumped when the shape of cached values changes, so a deploy never reads old-format entries.
CACHE_SCHEMA_VERSION = env.int("CACHE_SCHEMA_VERSION", default=1)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="shop"),
            "VERSION": CACHE_SCHEMA_VERSION,
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": CACHE_SOCKET_TIMEOUT,
                "SOCKET_TIMEOUT": CACHE_SOCKET_TIMEOUT,
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "shop-embedded",
            "VERSION": CACHE_SCHEMA_VERSION,
            "OPTIONS": {"MAX_ENTRIES": 50_000},
        }
    }

# Cache-aside policy (shop.cache). Catalog data changes rarely and every write invalidates it
# after commit, so the TTL only bounds the damage of a missed invalidation.
CATALOG_CACHE_TTL = env.int("CATALOG_CACHE_TTL", default=30 * 60)
# ±10 %: keys written together (a preheat, a deploy) must not all expire in the same second.
CACHE_TTL_JITTER = env.float("CACHE_TTL_JITTER", default=0.10)
# "Not found" is cached briefly: long enough to absorb a scan of missing ids, short enough that
# a product created a minute later shows up even if its invalidation was lost.
CACHE_MISS_TTL = env.int("CACHE_MISS_TTL", default=60)
# The single loader of a cold key holds this lock; longer than any sane catalog query.
CACHE_LOCK_TTL = env.float("CACHE_LOCK_TTL", default=10.0)
# Readers waiting for that loader give up and load themselves after this long: slower, but
# never an error because one loader died.
CACHE_LOCK_WAIT = env.float("CACHE_LOCK_WAIT", default=3.0)
# After a cache error this process skips the cache for this long, so a dead Redis costs one
# failed call per few seconds rather than one per request.
CACHE_DOWN_BACKOFF = env.float("CACHE_DOWN_BACKOFF", default=5.0)
# Version keys outlive every value written under them (preheat writes up to a few hours).
CACHE_VERSION_TTL = env.int("CACHE_VERSION_TTL", default=24 * 3600)
# Stock shown on pages is display-only (checkout reserves against the database), so a few
# seconds of staleness buys a hot product page that does not query stock on every view.
AVAILABILITY_CACHE_TTL = env.int("AVAILABILITY_CACHE_TTL", default=3)
# Each process keeps the stock of at most this many SKUs in memory to check kept pages against
# (apps.inventory.selectors.stock_available_snapshot), all re-read every AVAILABILITY_CACHE_TTL.
STOCK_SNAPSHOT_MAX_SKUS = env.int("STOCK_SNAPSHOT_MAX_SKUS", default=20000)
# Whole pages shared by anonymous readers (shop.pagecache) show stock too, so they live no
# longer than the stock figures; edits still invalidate them at once through their groups.
PAGE_CACHE_TTL = env.int("PAGE_CACHE_TTL", default=AVAILABILITY_CACHE_TTL)
# A shared page past PAGE_CACHE_TTL whose catalog versions still match is checked against the
# stock figures it showed and, if they are unchanged, kept for another PAGE_CACHE_TTL rather
# than rendered again; this long after it was built it is always rendered again.
PAGE_CACHE_MAX_AGE = env.int("PAGE_CACHE_MAX_AGE", default=60)
# Each process reuses the catalog versions it read for this long (capped at PAGE_CACHE_TTL):
# the longest a committed catalog edit can be served stale by a process that did not make it.
PAGE_VERSION_CHECK_INTERVAL = env.float("PAGE_VERSION_CHECK_INTERVAL", default=1.0)
# The in-process copy of shared pages (L1, per process, in front of Redis): at most this many
# pages and this many bytes of page bodies (plus ~1 KiB per entry), least recently used out.
PAGE_L1_MAX_ENTRIES = env.int("PAGE_L1_MAX_ENTRIES", default=2000)
PAGE_L1_MAX_BYTES = env.int("PAGE_L1_MAX_BYTES", default=32 * 1024 * 1024)
# How long the last copy of a shared page stays available for the "serve_stale" switch.
STALE_PAGE_TTL = env.int("STALE_PAGE_TTL", default=3600)
# Paths whose anonymous GETs are looked up in the page cache (views still opt in to storing).
# Empty disables the page cache.
PAGE_CACHE_PATHS = env("PAGE_CACHE_PATHS", default=r"^/(products/.*|api/v1/products/.*)?$")
# Any catalog write bumps one of these, retiring every shared page built before it.
PAGE_CACHE_GROUPS = ["catalog:listing", "catalog:categories"]
# preheat_cache default TTL: an hour covers the run-up to a sale.
PREHEAT_TTL = env.int("PREHEAT_TTL", default=60 * 60)
# How many listing pages per category preheat_cache warms (the first pages take the traffic).
PREHEAT_LISTING_PAGES = env.int("PREHEAT_LISTING_PAGES", default=3)

# Storefront and API page sizes.
CATALOG_PAGE_SIZE = env.int("CATALOG_PAGE_SIZE", default=24)
API_MAX_PAGE_SIZE = env.int("API_MAX_PAGE_SIZE", default=100)
HOME_HOT_PRODUCTS = 8

# Largest JSON body an API endpoint or a webhook reads (413 payload_too_large past it). The
# largest legitimate body, an order of ORDER_MAX_LINES lines, is about 2 KiB and a bank's
# notification under 1 KiB: 64 KiB is ample headroom, and bounds what one request makes a
# worker read and parse (Django's own 2.5 MB bound does not apply to DRF's JSON parser).
API_MAX_JSON_BYTES = env.int("API_MAX_JSON_BYTES", default=64 * 1024)

# Retry-After (seconds) on a 503 when a dependency is down: long enough not to hammer it.
SERVICE_UNAVAILABLE_RETRY_AFTER = env.int("SERVICE_UNAVAILABLE_RETRY_AFTER", default=5)

# Sessions in the database: a Redis outage must not log every buyer out or break login.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="")
# No broker configured: run tasks in-process so the embedded default needs nothing else.
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "memory://"
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("CELERY_BROKER_CONNECTION_TIMEOUT", default=3.0)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task, so each
# task pays new PostgreSQL connections (bench/flash_sale.py: a sale's 1,000 tickets were all
# resolved 31 s after it began that way, 16 s reusing them). With a reuse count it keeps them;
# the shop tidies them around each task as Django does around a request (shop.apps): a
# connection that broke or outlived DB_CONN_MAX_AGE is closed, the rest pass a health check.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = env("SHOP_TIME_ZONE", default="UTC")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Queues. The worker process consumes all of them (Procfile).
NOTIFICATIONS_QUEUE = "notifications"
ORDER_PROCESSING_QUEUE = "order.processing"
ORDER_PROCESSING_DLQ = "order.processing.dlq"
PAYMENTS_QUEUE = "payments"
CHECKOUT_QUEUE = "checkout"
CELERY_WORKER_QUEUES = [
    CHECKOUT_QUEUE,
    "default",
    NOTIFICATIONS_QUEUE,
    ORDER_PROCESSING_QUEUE,
    ORDER_PROCESSING_DLQ,
    PAYMENTS_QUEUE,
]
CELERY_TASK_ROUTES = {
    "apps.orders.tasks.order_process": {"queue": ORDER_PROCESSING_QUEUE},
    "apps.orders.tasks.order_dead_letter": {"queue": ORDER_PROCESSING_DLQ},
    "apps.orders.tasks.order_placed_notify": {"queue": NOTIFICATIONS_QUEUE},
    "apps.payments.tasks.*": {"queue": PAYMENTS_QUEUE},
    "apps.orders.tasks.checkout_ticket_process": {"queue": CHECKOUT_QUEUE},
    "shop.tasks.alert_deliver": {"queue": NOTIFICATIONS_QUEUE},
}
# RabbitMQ's consumer_timeout (30 min by default): a late-acked message held longer than this
# (an ETA/countdown task) makes the broker close the channel. Every countdown stays below it.
BROKER_CONSUMER_TIMEOUT = env.int("BROKER_CONSUMER_TIMEOUT", default=30 * 60)
# Retry invalidations that could not reach the cache; bounds staleness after a Redis blip.
CACHE_INVALIDATION_RETRY_SECONDS = env.int("CACHE_INVALIDATION_RETRY_SECONDS", default=30)

# --- Orders -----------------------------------------------------------------------------------
# How long checkout holds stock for an unpaid order: long enough to pay, short enough that a
# flash sale's abandoned carts go back on sale quickly.
ORDER_RESERVATION_TTL = env.int("ORDER_RESERVATION_TTL", default=15 * 60)
# Per line and per order bounds: a typo of 1000 must not empty a warehouse.
ORDER_LINE_MAX_QUANTITY = env.int("ORDER_LINE_MAX_QUANTITY", default=10)
ORDER_MAX_LINES = env.int("ORDER_MAX_LINES", default=20)
ORDER_EXPIRY_SWEEP_SECONDS = env.int("ORDER_EXPIRY_SWEEP_SECONDS", default=60)
# A reservation whose order was never written (a crash mid-checkout) is released by the sweep
# this long after the hold: far longer than a live checkout takes from reserving to writing
# its order (milliseconds), short enough that a crash does not keep stock off sale for long.
ORPHAN_RESERVATION_GRACE = env.int("ORPHAN_RESERVATION_GRACE", default=60)
# Processing: 1 attempt + this many re-queues from the dead-letter queue, then manual review.
ORDER_PROCESSING_MAX_RETRIES = env.int("ORDER_PROCESSING_MAX_RETRIES", default=3)
# Delay before a dead letter is re-queued: gives a flaky dependency time to recover.
DEAD_LETTER_RETRY_DELAY = env.int("DEAD_LETTER_RETRY_DELAY", default=60)
# One loyalty point per this many minor units paid (1 point per euro).
LOYALTY_MINOR_UNITS_PER_POINT = env.int("LOYALTY_MINOR_UNITS_PER_POINT", default=100)

# What "retry now" does for each kind of manual-review item.
MANUAL_REVIEW_RETRY = {"order_processing": "apps.orders.services.order_review_retry"}
# Checks run by `manage.py audit_invariants` (each yields violation messages).
AUDIT_CHECKS = [
    "apps.inventory.audit.stock_violations",
    "apps.orders.audit.order_violations",
    "apps.payments.audit.ledger_violations",
    "apps.payments.audit.payment_violations",
]

# --- Payments ---------------------------------------------------------------------------------
# Base URL of the sandbox acquirer (`python manage.py run_sandbox_acquirer`), or of a real one.
ACQUIRER_URL = env("ACQUIRER_URL", default="http://127.0.0.1:8700")
# Shared secret of the sandbox's webhook signatures; each channel signs with "<secret>-<code>".
ACQUIRER_WEBHOOK_SECRET = env("ACQUIRER_WEBHOOK_SECRET", default="sandbox-webhook-secret")
# Webhooks older or newer than this are refused (replay protection), as Stripe does.
WEBHOOK_TOLERANCE_SECONDS = env.int("WEBHOOK_TOLERANCE_SECONDS", default=300)
# Outbound calls to a channel: connect fast, and give up reading after the call timeout.
CHANNEL_CONNECT_TIMEOUT = env.float("CHANNEL_CONNECT_TIMEOUT", default=1.0)
# Seconds a web process reuses the channels' live health (a 300 s window in Redis) when it
# ranks channels for a card payment, instead of reading it for every payment. Ranking is
# advisory (the breaker decides at call time), and a second is nothing to a 300 s window.
CHANNEL_HEALTH_CACHE_TTL = env.float("CHANNEL_HEALTH_CACHE_TTL", default=1.0)
# Circuit breaker per channel (state shared through Redis). Defaults from the seed design:
# open after 5 failures, call timeout 3 s, try again (half-open) after 30 s.
BREAKER_FAILURE_THRESHOLD = env.int("BREAKER_FAILURE_THRESHOLD", default=5)
BREAKER_CALL_TIMEOUT = env.float("BREAKER_CALL_TIMEOUT", default=3.0)
BREAKER_RESET_TIMEOUT = env.float("BREAKER_RESET_TIMEOUT", default=30.0)
# Failures older than this no longer count towards opening (a slow trickle never opens it).
BREAKER_FAILURE_WINDOW = env.float("BREAKER_FAILURE_WINDOW", default=60.0)
# How many trial calls all processes together may make while half-open.
BREAKER_HALF_OPEN_PROBES = env.int("BREAKER_HALF_OPEN_PROBES", default=1)
# Retries of retriable, idempotency-keyed calls: 3 attempts, ×2, 1 s initial, full jitter.
RETRY_ATTEMPTS = env.int("RETRY_ATTEMPTS", default=3)
RETRY_INITIAL_DELAY = env.float("RETRY_INITIAL_DELAY", default=1.0)
RETRY_MULTIPLIER = env.float("RETRY_MULTIPLIER", default=2.0)
RETRY_MAX_DELAY = env.float("RETRY_MAX_DELAY", default=10.0)
# A payment still "trying" after this long is decided by the recovery job (asking the channel).
TCC_TRYING_TIMEOUT = env.int("TCC_TRYING_TIMEOUT", default=60)
# Recovery runs this often; a transaction that fails to finish backs off from INITIAL to MAX.
TCC_RECOVERY_SECONDS = env.int("TCC_RECOVERY_SECONDS", default=15)
TCC_RETRY_INITIAL = env.float("TCC_RETRY_INITIAL", default=5.0)
TCC_RETRY_MAX = env.float("TCC_RETRY_MAX", default=600.0)
# Fences outlive the longest retry window by far (a redelivered branch call days later is
# still recognised), then are deleted.
TCC_FENCE_RETENTION_DAYS = env.int("TCC_FENCE_RETENTION_DAYS", default=7)
# Payments one operator may refund in one go from the admin ("Refund…" on several selected):
# a page's worth, so an accidental "select all" cannot refund a whole shard.
ADMIN_REFUND_BATCH_MAX = env.int("ADMIN_REFUND_BATCH_MAX", default=50)

# --- Flash sales: admission control --------------------------------------------------------------
# Rate-limit layers: name → (requests, per seconds, burst). Operators override any of them at
# run time in the admin (Platform → Rate limit rules); RUNTIME_CONFIG_TTL bounds how long a
# change takes to reach every process.
RATE_LIMITS = {
    # Per buyer on write endpoints: far above any human, far below a script.
    "user_writes": (100, 600, 100),
    # Per endpoint and system-wide: what this deployment can serve; GCRA, so no 2x burst at a
    # window boundary. The burst absorbs a second's jitter.
    "endpoint": (1000, 1, 200),
    "system": (10_000, 1, 2000),
    # Per flash-sale SKU: admissions per second into its queue.
    "hot_sku": (2000, 1, 400),
    # Login attempts per IP and per username (password guessing).
    "login": (10, 60, 10),
}
RUNTIME_CONFIG_TTL = env.float("RUNTIME_CONFIG_TTL", default=5.0)
# Degradation switches operators can flip in the admin (Platform → Switches).
SWITCHES = {
    "widgets_off": "Hide non-core widgets (related products)",
    "serve_stale": "Serve the last cached copy of shared pages even when stale",
    "read_only": "Browse only: every write answers 503 and pages show a banner",
}
# A flash-sale SKU's checkout queue holds at most this many waiting tickets; past it the
# answer is an immediate 503 with Retry-After.
CHECKOUT_QUEUE_BOUND = env.int("CHECKOUT_QUEUE_BOUND", default=5000)
# Above this many checkouts in flight at once, ordinary checkouts are queued too.
CHECKOUT_QUEUE_ABOVE_INFLIGHT = env.int("CHECKOUT_QUEUE_ABOVE_INFLIGHT", default=200)
# Gate counters live this long after their last change (a sale lasts minutes to hours).
FLASH_SALE_COUNTER_TTL = env.int("FLASH_SALE_COUNTER_TTL", default=24 * 3600)
# Once a sale's gate answers "sold out", each web process refuses its checkouts by itself for
# this long (no Redis, no SQL); a re-stock, a rebuild or the end of the sale clears the flag
# through a Redis pub/sub message, and a lost message costs at most this long. 1 s: a refusal
# storm after the sell-out stays local, a re-stock is seen within a second. 0 turns it off.
FLASH_SOLD_OUT_TTL = env.float("FLASH_SOLD_OUT_TTL", default=1.0)

# --- Alerts -------------------------------------------------------------------------------------
# Where alert notifications go (shop.alerts): dotted paths of classes with a send(message)
# method. The log target costs nothing and still works when mail and the webhook do not.
ALERT_TARGETS = env.list(
    "ALERT_TARGETS",
    default=["shop.alerts.LogTarget", "shop.alerts.EmailTarget", "shop.alerts.WebhookTarget"],
)
# One notification per alert (kind + key) per window; later occurrences are only counted. A
# quarter of an hour: a flapping channel or a storm of dead letters pages once, and a problem
# still there after a coffee break is heard of again.
ALERT_DEDUP_WINDOW = env.int("ALERT_DEDUP_WINDOW", default=15 * 60)
# E-mail goes to the active members of this group (created empty by the migrations: add the
# operators in the admin), plus any addresses in ALERT_EMAILS (a team list, a pager gateway).
ALERT_OPERATORS_GROUP = env("ALERT_OPERATORS_GROUP", default="operators")
ALERT_EMAILS = env.list("ALERT_EMAILS", default=[])
# The webhook target POSTs the alert as JSON here (chat, incident tool); empty: skipped.
ALERT_WEBHOOK_URL = env("ALERT_WEBHOOK_URL", default="")
# Delivery runs on a worker, or inline in the failing process when the broker is down: short
# timeouts so a dead mail server or webhook cannot stall it.
ALERT_CONNECT_TIMEOUT = env.float("ALERT_CONNECT_TIMEOUT", default=1.0)
ALERT_SEND_TIMEOUT = env.float("ALERT_SEND_TIMEOUT", default=3.0)
# A target that failed is tried again by the worker (only that target), this many times, a
# minute apart: a mail server restarting should not lose the page.
ALERT_DELIVERY_RETRIES = env.int("ALERT_DELIVERY_RETRIES", default=3)
ALERT_DELIVERY_RETRY_DELAY = env.int("ALERT_DELIVERY_RETRY_DELAY", default=60)
# A payment channel alerts when fewer than 90 % of its calls succeeded over the last 5 minutes
# (its live health window; at most that window's 300 s), counted only from 20 calls up so one
# failure out of one pages nobody. Checked every minute.
ALERT_CHANNEL_WINDOW = env.int("ALERT_CHANNEL_WINDOW", default=300)
ALERT_CHANNEL_SUCCESS_MIN = env.float("ALERT_CHANNEL_SUCCESS_MIN", default=0.90)
ALERT_CHANNEL_MIN_ATTEMPTS = env.int("ALERT_CHANNEL_MIN_ATTEMPTS", default=20)
ALERT_CHANNEL_CHECK_SECONDS = env.int("ALERT_CHANNEL_CHECK_SECONDS", default=60)
# A flash sale's checkout queue alerts at 80 % of CHECKOUT_QUEUE_BOUND: time to act (more
# workers, a switch) before buyers get "try later". Checked every 15 s: queues fill fast.
ALERT_QUEUE_NEAR_BOUND = env.float("ALERT_QUEUE_NEAR_BOUND", default=0.8)
ALERT_QUEUE_CHECK_SECONDS = env.int("ALERT_QUEUE_CHECK_SECONDS", default=15)
# The invariants of AUDIT_CHECKS are audited every 10 minutes (each check reads whole tables,
# so not much more often). A failing check is run again this many seconds later and alerts only
# if it fails again: a cross-database step caught half-way (order paid, stock about to be
# committed) is not a violation.
INVARIANT_AUDIT_SECONDS = env.int("INVARIANT_AUDIT_SECONDS", default=600)
INVARIANT_AUDIT_RECHECK_SECONDS = env.float("INVARIANT_AUDIT_RECHECK_SECONDS", default=5.0)

# --- Reconciliation -----------------------------------------------------------------------------
# Fetching a day's settlement file may take a while for a big day.
SETTLEMENT_FETCH_TIMEOUT = env.float("SETTLEMENT_FETCH_TIMEOUT", default=60.0)
# One run per channel and day at a time; longer than the longest run.
RECONCILIATION_LOCK_TTL = env.int("RECONCILIATION_LOCK_TTL", default=3600)
# A payment unknown or pending this long is re-queried by the janitor (then escalated).
PAYMENT_STUCK_AFTER = env.int("PAYMENT_STUCK_AFTER", default=15 * 60)

# --- Idempotency and outbox -------------------------------------------------------------------
# An in-flight key is owned this long; a crashed owner's key is taken over afterwards.
# Longer than any checkout takes, short enough that a buyer's retry is not blocked for long.
IDEMPOTENCY_LOCK_TTL = env.int("IDEMPOTENCY_LOCK_TTL", default=30)
# Keys are remembered for a day (clients retry within minutes; Stripe keeps 24 h too).
IDEMPOTENCY_RECORD_TTL = env.int("IDEMPOTENCY_RECORD_TTL", default=24 * 3600)
# The relay sweeps unpublished outbox rows this often (the fast path usually wins).
OUTBOX_RELAY_SECONDS = env.int("OUTBOX_RELAY_SECONDS", default=5)
OUTBOX_RELAY_BATCH = env.int("OUTBOX_RELAY_BATCH", default=200)
# The relay leaves rows this young to the fast path of the process that wrote them.
OUTBOX_RELAY_GRACE = env.float("OUTBOX_RELAY_GRACE", default=2.0)
# After a failed publish a process skips the fast path this long (the relay retries).
OUTBOX_BROKER_BACKOFF = env.float("OUTBOX_BROKER_BACKOFF", default=5.0)
# The outbox's (and alerts') publisher connects within this many seconds or gives up (the
# relay publishes later): a broker on the same network answers a TCP connect and the AMQP
# handshake in a few ms, and a request must never wait seconds on a dead or partitioned one.
OUTBOX_PUBLISH_CONNECT_TIMEOUT = env.float("OUTBOX_PUBLISH_CONNECT_TIMEOUT", default=0.2)
# ... and the broker confirms a published message within this many seconds, else the publish
# failed (a message written into a connection the broker has dropped is never lost silently).
OUTBOX_PUBLISH_TIMEOUT = env.float("OUTBOX_PUBLISH_TIMEOUT", default=1.0)
OUTBOX_KEEP_PUBLISHED_DAYS = env.int("OUTBOX_KEEP_PUBLISHED_DAYS", default=7)
# Committed messages a process's background publisher may hold in memory. At ~1,000
# checkouts/s a second of broker trouble fits; past it messages wait for the relay (their rows
# are durable), and a queue that size costs a few MB at most.
OUTBOX_PUBLISH_QUEUE = env.int("OUTBOX_PUBLISH_QUEUE", default=10_000)
# The background publisher closes its database connections after this long without work, so
# an idle process holds no extra connection; under load it keeps them.
OUTBOX_PUBLISHER_IDLE = env.float("OUTBOX_PUBLISHER_IDLE", default=1.0)

CELERY_BEAT_SCHEDULE = {
    "cache-invalidations-retry": {
        "task": "shop.tasks.cache_invalidations_retry",
        "schedule": float(CACHE_INVALIDATION_RETRY_SECONDS),
    },
    "orders-expire-sweep": {
        "task": "apps.orders.tasks.orders_expire_sweep",
        "schedule": float(ORDER_EXPIRY_SWEEP_SECONDS),
    },
    "outbox-relay": {"task": "shop.tasks.outbox_relay", "schedule": float(OUTBOX_RELAY_SECONDS)},
    "idempotency-cleanup": {"task": "shop.tasks.idempotency_cleanup", "schedule": 3600.0},
    "outbox-purge": {"task": "shop.tasks.outbox_purge", "schedule": 24 * 3600.0},
    "payments-tcc-recover": {
        "task": "apps.payments.tasks.tcc_recover",
        "schedule": float(TCC_RECOVERY_SECONDS),
    },
    "payments-refunds-retry": {"task": "apps.payments.tasks.refunds_retry", "schedule": 60.0},
    "tcc-fences-cleanup": {"task": "shop.tasks.tcc_fences_cleanup", "schedule": 24 * 3600.0},
    # Nightly at 02:00 shop time: yesterday's settlement files (editable in the admin).
    "reconciliation-nightly": {
        "task": "apps.reconciliation.tasks.reconcile_previous_day",
        "schedule": crontab(hour=2, minute=0),
    },
    "flash-sales-repair": {"task": "apps.flashsales.tasks.flash_sales_repair", "schedule": 60.0},
    "payments-stuck-janitor": {
        "task": "apps.reconciliation.tasks.payments_stuck_janitor",
        "schedule": 300.0,
    },
    # Alerts (shop.alerts): checks that raise one when their condition holds.
    "alerts-channels-watch": {
        "task": "apps.payments.tasks.channels_watch",
        "schedule": float(ALERT_CHANNEL_CHECK_SECONDS),
    },
    "alerts-checkout-queues-watch": {
        "task": "apps.flashsales.tasks.checkout_queues_watch",
        "schedule": float(ALERT_QUEUE_CHECK_SECONDS),
    },
    "invariants-audit": {
        "task": "shop.tasks.invariants_audit",
        "schedule": float(INVARIANT_AUDIT_SECONDS),
    },
}

# --- Auth, i18n, static ---------------------------------------------------------------------
# ModelBackend, but a login finds the account by any spelling of its name (trimmed,
# NFKC-normalised, any case): the form usernames are unique in and the login throttle counts
# attempts under (docs/security-limits.md).
AUTHENTICATION_BACKENDS = ["apps.users.backends.CanonicalUsernameBackend"]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "storefront-login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
# The business day (reconciliation, reports) is counted in this zone.
TIME_ZONE = env("SHOP_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve straight from the app folders: no collectstatic step for dev, tests or benchmarks.
# production.py switches to hashed, compressed files built by collectstatic.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- API ------------------------------------------------------------------------------------
# Proxies in front of the web processes that append to X-Forwarded-For (a load balancer: 1).
# Per-IP rate limits (logins, anonymous writes) key on the address the outermost trusted proxy
# saw; 0 (no proxy) uses the connection's own address. Production defaults to 1.
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=0)
# Seconds a process trusts a token it has looked up (shop.authentication): a buyer retrying
# during a sale is not a database query per attempt. While the process's broadcast listener
# is subscribed, a revocation (token deleted, user deactivated, new password) drops the entry
# in every process at once, so it may be trusted long: 120 s covers a sale's retries (at 5 s,
# 2,000 buyers kept falling out and the lookup was a third of a refusal's cost), and bounds
# what a revocation behind the signals' back (a bulk QuerySet.update) is seen within. While
# not subscribed (no Redis, listener reconnecting) only AUTH_TOKEN_CACHE_TTL: a revocation
# might not reach the process, so 5 s is how long it may keep working. 0 and 0: look up every
# request; AUTH_TOKEN_CACHE_TTL_SUBSCRIBED=0 alone: no listener, 5 s as before.
AUTH_TOKEN_CACHE_TTL = env.float("AUTH_TOKEN_CACHE_TTL", default=5.0)
AUTH_TOKEN_CACHE_TTL_SUBSCRIBED = env.float("AUTH_TOKEN_CACHE_TTL_SUBSCRIBED", default=120.0)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # TokenAuthentication that binds the user id to the log context (shop.logs).
        "shop.authentication.LogContextTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON through shop.parsers (size and depth bounded; DRF's parser lets a RecursionError
    # out). Forms stay for the browsable API; Django bounds them (DATA_UPLOAD_MAX_*).
    "DEFAULT_PARSER_CLASSES": [
        "shop.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "shop.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "shop.api_schema.ShopAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Shop API",
    "DESCRIPTION": "Catalog, checkout, payments. Errors are {code, detail}; see API.md.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Metrics, logging, e-mail ---------------------------------------------------------------
# /metrics answers staff sessions, or `Authorization: Bearer <METRICS_TOKEN>` when set.
METRICS_TOKEN = env("METRICS_TOKEN", default="")
# Live metrics (breakers, queue depths, backlogs) are read from Redis, the broker and the
# database at scrape time; a scrape within this many seconds of the last one reuses them.
METRICS_LIVE_TTL = env.float("METRICS_LIVE_TTL", default=5.0)
# Several processes (gunicorn workers, Celery prefork) share their samples through files in
# PROMETHEUS_MULTIPROC_DIR (read by prometheus-client itself); make sure it exists.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env("EMAIL_HOST", default="localhost")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="shop@localhost")

LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# Every line carries the request id and the user, order and payment ids known at the time,
# in web and worker processes alike (shop.logs). "json": one object per line, for a log
# pipeline to index and to follow one order end to end (production's default); "readable":
# one line a person can read in a terminal (the default here, for development).
LOG_FORMAT = env("LOG_FORMAT", default="readable")
if LOG_FORMAT not in {"readable", "json"}:
    raise ValueError(f"LOG_FORMAT must be readable or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "log_context": {"()": "shop.logs.LogContextFilter"},
        "expected_refusals": {"()": "shop.logs.ExpectedRefusalFilter"},
    },
    "formatters": {
        "readable": {"()": "shop.logs.ReadableFormatter"},
        "json": {"()": "shop.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["log_context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # A 409 (sold out, purchase limit) or 429 is an answer, not a problem: counted in
        # shop_checkouts_total / shop_rate_limited_total, not logged one by one.
        "django.request": {"filters": ["expected_refusals"]},
        "celery": {"level": LOG_LEVEL},
        # Eager Celery (embedded profile) still opens its in-memory transport, and kombu warns
        # about the missing host name every time; nothing is wrong.
        "kombu.connection": {"level": "ERROR" if CELERY_TASK_ALWAYS_EAGER else LOG_LEVEL},
    },
}

# True when every service of the services profile is configured (not whether it is reachable).
SERVICES_PROFILE = (
    DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    and bool(REDIS_URL)
    and not CELERY_TASK_ALWAYS_EAGER
)
