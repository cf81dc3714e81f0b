"""The baseline every HTTP benchmark is compared with: a minimal Django site (Security and
Common middleware only, no apps, no database) whose one view answers ``ok``. It is served by
gunicorn with the same worker model and count as the shop in the same run, so a ratio says how
much of the framework's own ceiling a shop path keeps.

Serve it with ``DJANGO_SETTINGS_MODULE=bench.minimal_site gunicorn bench.minimal_site`` (what
``bench.common.minimal_gunicorn`` does)."""

from django.http import HttpRequest, HttpResponse
from django.urls import path, re_path

SECRET_KEY = "bench-minimal-site-not-secret"  # nosec B105: a local benchmark baseline only
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = __name__
DATABASES: dict = {}
USE_TZ = True


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


# Any path: the flash-sale benchmark sends it the very requests it sends the shop (POST
# /api/v1/orders/ with a body and headers), so both are parsed and generated alike.
urlpatterns = [path("healthz", ok), path("", ok), re_path(r"^", ok)]

if __name__ != "__main__":  # imported by gunicorn as the WSGI module
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    from django.core.wsgi import get_wsgi_application

    application = get_wsgi_application()
