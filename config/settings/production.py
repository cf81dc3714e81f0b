"""Production: the services profile, refusing to start on development defaults."""

from django.core.exceptions import ImproperlyConfigured

from config.settings.base import *  # noqa: F403
from config.settings.base import (
    BASE_DIR,
    CELERY_TASK_ALWAYS_EAGER,
    DATABASES,
    DEV_SECRET_KEY,
    REDIS_URL,
    env,
)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])

_problems = []
if DEBUG:
    _problems.append("DEBUG must be off in production")
if not SECRET_KEY or SECRET_KEY == DEV_SECRET_KEY or SECRET_KEY.startswith("django-insecure"):
    _problems.append("SECRET_KEY must be set to a real secret (not the development key)")
elif len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5:
    _problems.append("SECRET_KEY must be at least 50 characters with at least 5 distinct ones")
if not ALLOWED_HOSTS:
    _problems.append("ALLOWED_HOSTS must name the hosts this shop answers for")
if not env("DATABASE_URL", default=""):
    _problems.append("DATABASE_URL must be set (PostgreSQL)")
if not env("ORDER_SHARD_URLS", default=""):
    _problems.append("ORDER_SHARD_URLS must be set (one PostgreSQL URL per order shard)")
_sqlite = [a for a, c in DATABASES.items() if c["ENGINE"] == "django.db.backends.sqlite3"]
if _sqlite:
    _problems.append(f"production needs PostgreSQL, not SQLite, for: {', '.join(_sqlite)}")
if not REDIS_URL:
    _problems.append("REDIS_URL must be set")
if CELERY_TASK_ALWAYS_EAGER:
    _problems.append("CELERY_BROKER_URL must be set")
if _problems:
    raise ImproperlyConfigured("Refusing to start: " + "; ".join(_problems))

# Behind a TLS-terminating load balancer that sets X-Forwarded-Proto and appends the client's
# address to X-Forwarded-For (per-IP rate limits key on it: shop.throttle.client_ip).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=1)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# Health probes come over plain HTTP from inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=True)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Hashed, compressed static files built by `collectstatic` at deploy time.
WHITENOISE_USE_FINDERS = False
WHITENOISE_AUTOREFRESH = False
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# One JSON object per log line, for the log pipeline (see LOG_FORMAT in base.py).
LOG_FORMAT = env("LOG_FORMAT", default="json")
LOGGING = {
    **LOGGING,  # noqa: F405
    "handlers": {"console": {**LOGGING["handlers"]["console"], "formatter": LOG_FORMAT}},  # noqa: F405
}
REST_FRAMEWORK = {
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
