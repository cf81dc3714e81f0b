"""Test settings: the profile chosen by the environment, tuned for a fast, quiet suite."""

from config.settings.base import *  # noqa: F403
from config.settings.base import CACHES, env

DEBUG = False
# Hashing passwords slowly is a feature in production and a cost in tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# In-memory mail, unless a test runs a worker against its own SMTP server.
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "root": {"handlers": ["null"], "level": "WARNING"},
}
# Tests share one Redis with whoever else uses it: keep their keys apart.
CACHES["default"]["KEY_PREFIX"] = "shop-test"
WHITENOISE_AUTOREFRESH = False

# SQLite test databases as files, not shared-cache memory: shared-cache SQLite locks whole
# tables, so the suite's concurrent readers would fail with "table is locked" instead of
# waiting. Files get WAL and the busy timeout from base.py.
for _alias, _db in DATABASES.items():  # noqa: F405
    if _db["ENGINE"] == "django.db.backends.sqlite3":
        _db["TEST"] = {"NAME": str(VAR_DIR / f"test_{_alias}.sqlite3")}  # noqa: F405

# Tests change rate limits and switches through shop.runtime.runtime_refresh(); otherwise the
# defaults stay in force (no surprise queries in query-count tests).
RUNTIME_CONFIG_TTL = 3600
# Tests delete tokens and deactivate users and expect the next request to see it;
# tests/users/test_token_cache.py turns the cache on where it is the subject.
AUTH_TOKEN_CACHE_TTL = 0
AUTH_TOKEN_CACHE_TTL_SUBSCRIBED = 0
# Every scrape reads the live state afresh (tests change it between scrapes).
METRICS_LIVE_TTL = 0
# Routing reads channel health afresh (tests record outcomes and rank at once);
# tests/payments/test_card_payments.py turns the cache on where it is the subject.
CHANNEL_HEALTH_CACHE_TTL = 0
