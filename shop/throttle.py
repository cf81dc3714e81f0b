"""Admission control in layers, each a named rule operators change at run time (shop.runtime):

* ``system``      — every request, GCRA in Redis (no 2× burst at a window boundary);
* ``endpoint``    — per route, GCRA;
* ``hot_sku``     — per flash-sale SKU, GCRA (called from the checkout);
* ``user_writes`` — per client on writes, django-ratelimit's fixed window (good enough there);
                    a client is the authenticated user, else the address (:func:`client_identity`);
* ``login``       — per IP and per username on logins, fixed window (password guessing); the
                    username in its canonical form (``shop.authentication.username_canonical``).

A refusal is 429 ``rate_limited`` with ``Retry-After`` (a friendly page on the storefront). If
Redis is unreachable, every route fails open to a per-process limit (DESIGN §6: payments keep
working through a Redis outage). A view that must rather refuse declares it itself
(``throttle_fail = "closed"``, see :func:`_view_option`): it then answers 503 while the shared
limiter is unreachable. The ``read_only`` switch refuses every write with 503 here too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django_ratelimit.core import get_usage
from rest_framework.exceptions import AuthenticationFailed

from shop.authentication import request_token_user, username_canonical
from shop.cache import CACHE_BACKEND_ERRORS, cache_available
from shop.errors import ServiceUnavailable, ShopError, render_error
from shop.parsing import ParseRefused, json_loads_bounded
from shop.ratelimit import RATE_LIMITED, Check, Limit, gcra_check_all
from shop.runtime import limit_rule, switch_on

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXEMPT_PREFIXES = ("/healthz", "/readyz", "/metrics", "/static/")
LOGIN_ROUTES = {"storefront-login", "api-token", "admin:login"}
# Writes that stay open in read-only mode: logging in and out, and the operators' admin.
READ_ONLY_EXEMPT_ROUTES = LOGIN_ROUTES | {"storefront-logout"}


class RateLimited(ShopError):
    code = "rate_limited"
    http_status = 429
    default_message = "Too many requests — please wait a moment and try again."


def _refuse(retry_after: float, *, layer: str) -> None:
    raise RateLimited(extra={"layer": layer}, retry_after=max(1, math.ceil(retry_after)))


def limit_checks(layers: Sequence[tuple[str, str]]) -> list[Check]:
    """The GCRA checks of ``layers`` ((layer, key) pairs), the operators' disabled ones
    skipped: for a caller that runs them in a script of its own (see GCRA_LUA_FUNCTION)."""
    checks = []
    for layer, key in layers:
        if (rule := limit_rule(layer)) is not None:
            checks.append(Check(f"{layer}:{key}", Limit(rule.rate, rule.period, rule.burst), layer))
    return checks


def rate_limited(retry_after: float, *, layer: str) -> RateLimited:
    """The refusal of a limit checked in another script (counted like the others)."""
    RATE_LIMITED.labels(layer).inc()
    return RateLimited(extra={"layer": layer}, retry_after=max(1, math.ceil(retry_after)))


# Returned by a view's ``answer_before_limits`` hook: the view checks this request's limit
# layers itself, in one call with its own work (see ThrottleMiddleware); the layers are left
# on the request under LIMIT_LAYERS.
LIMITS_IN_VIEW = object()
LIMIT_LAYERS = "shop_limit_layers"
# What a view's hook answered when shop.early asked it before this middleware (then not asked
# again here); absent when it was not asked.
EARLY_RESULT = "shop_early_result"


def request_limit_layers(request: HttpRequest) -> list[tuple[str, str]]:
    """The limit layers the middleware left for the view to check (none when it checked them)."""
    return list(getattr(request, LIMIT_LAYERS, ()))


def limits_check(layers: list[tuple[str, str]], *, fail: str = "open") -> None:
    """Apply GCRA layers ((layer, key) pairs; the operators' disabled ones skipped) in one
    call: admitted only if every layer admits, and only then counted in each. Raises
    RateLimited naming the refusing layer, or ServiceUnavailable when failing closed and Redis
    is unreachable."""
    checks = []
    for layer, key in layers:
        if (rule := limit_rule(layer)) is not None:
            limit = Limit(rule.rate, rule.period, rule.burst)
            checks.append(Check(f"{layer}:{key}", limit, layer))
    if not checks:
        return
    decision, layer = gcra_check_all(checks, fail=fail)
    if decision.allowed:
        return
    if decision.degraded and fail == "closed":
        raise ServiceUnavailable("This is paused for a moment; please try again shortly.")
    _refuse(decision.retry_after, layer=layer)


def limit_check(layer: str, key: str, *, fail: str = "open") -> None:
    """One GCRA layer (see :func:`limits_check`)."""
    limits_check([(layer, key)], fail=fail)


def hot_sku_check(sku_id: int) -> None:
    limit_check("hot_sku", str(sku_id))


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind TRUSTED_PROXY_HOPS proxies (a load
    balancer appends the address it saw to X-Forwarded-For) the entry that many places from
    the right — entries further left are the client's own claims and are not trusted."""
    hops = settings.TRUSTED_PROXY_HOPS
    if hops > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "")


def client_identity(request: HttpRequest) -> str:
    """Who is asking, for per-client limits: the authenticated user — the API token's (when
    it resolves to an active user) or the session's — else the client's address.

    A header is never an identity by itself: an invalid token counts under its address (DRF
    answers it 401 on the routes that take tokens), and spacing or case variants of one valid
    header are one user, since the header is parsed as DRF parses it."""
    try:
        resolved = request_token_user(request)
    except AuthenticationFailed:
        return "ip:" + client_ip(request)
    except DatabaseError:  # cannot tell who it is: the address; the view reports the outage
        return "ip:" + client_ip(request)
    if resolved is not None:
        return f"u:{resolved[0].pk}"
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"u:{user.pk}"
    return "ip:" + client_ip(request)


def _fixed_window(request: HttpRequest, layer: str, key: Any, *, fail: str) -> None:
    """django-ratelimit's fixed window on the shared cache; while Redis is unreachable the
    same rule applies through the GCRA layer's fallback (per process when failing open, 503
    when failing closed), so logins are never unlimited during an outage."""
    rule = limit_rule(layer)
    if rule is None:
        return
    shared = cache_available()
    if shared:
        try:
            usage = get_usage(
                request,
                group=layer,
                key=key,
                rate=f"{rule.rate}/{max(1, round(rule.period))}s",
                increment=True,
            )
        except CACHE_BACKEND_ERRORS:
            shared = False
    if not shared:
        limit_check(layer, f"{layer}:{key(layer, request)}", fail=fail)
        return
    if usage and usage["should_limit"]:
        RATE_LIMITED.labels(layer).inc()
        _refuse(usage.get("time_left", 1), layer=layer)


# The per-username key of login bodies the throttle cannot read (see _login_username).
UNREADABLE_LOGIN = "\x00unreadable"
_FORM_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}


def _login_username(request: HttpRequest) -> str:
    """The canonical username a login request names, read the way the login views read it
    (form fields, else a JSON object's ``username``, a string or number as DRF's CharField
    takes it); "" when it names none. A JSON body this cannot read (not in the request's
    charset, nested deeper than ``json_loads_bounded`` goes) is ``UNREADABLE_LOGIN``: every
    such body shares one window, so padding a login is no way around the per-username limit
    even where a view's parser reads more than this one does."""
    if request.content_type in _FORM_TYPES:
        try:
            raw = request.POST.get("username")
        except MultiPartParserError:
            return UNREADABLE_LOGIN
        return username_canonical(raw) if isinstance(raw, str) else ""
    body = request.body
    if not body:
        return ""
    try:
        data = json_loads_bounded(body.decode(request.encoding or settings.DEFAULT_CHARSET))
    except (ParseRefused, UnicodeDecodeError, LookupError):
        return UNREADABLE_LOGIN
    raw = data.get("username") if isinstance(data, dict) else None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        return ""
    return username_canonical(str(raw))


def _login_checks(request: HttpRequest) -> None:
    _fixed_window(request, "login", lambda group, r: "ip:" + client_ip(r),
                  fail="open")  # fmt: skip
    if username := _login_username(request):
        _fixed_window(request, "login", lambda group, r: f"user:{username}", fail="open")


class ThrottleMiddleware:
    """The system, endpoint, per-client-writes and login layers, and the read-only switch.
    Runs once the view is known (process_view), so the endpoint key is the route."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if request.path_info.startswith(EXEMPT_PREFIXES):
            return None
        match = request.resolver_match
        fail = "closed" if view_option(view, "throttle_fail", "open") == "closed" else "open"
        write = request.method not in SAFE_METHODS
        try:
            if write and switch_on("read_only") and not _read_only_exempt(request, match):
                raise ServiceUnavailable(
                    "The shop is in browse-only mode for a moment; orders are paused."
                )
            # The view may answer this request by itself, touching nothing remote (a flash
            # sale this process knows is sold out): counting it would cost more than that.
            # (EarlyAnswerMiddleware asked it already for a route without parameters.)
            response = request.__dict__.get(EARLY_RESULT)
            if write and EARLY_RESULT not in request.__dict__:
                hook = view_option(view, "answer_before_limits", None)
                response = hook(request) if hook is not None else None
            route = match.route if match else request.path_info
            if response is LIMITS_IN_VIEW and fail == "open":
                # The view checks the layers in one call with its own work (the flash-sale
                # gate): the same layers, keys and rules, GCRA throughout.
                layers = [("system", "all"), ("endpoint", route)]
                if view_option(view, "client_write_limit", True):
                    layers.append(("user_writes", client_identity(request)))
                setattr(request, LIMIT_LAYERS, layers)
                return None
            if response is not None and response is not LIMITS_IN_VIEW:
                return response
            limits_check([("system", "all"), ("endpoint", route)], fail=fail)
            if write:
                if _is_login_route(match):
                    _login_checks(request)
                elif view_option(view, "client_write_limit", True):
                    _fixed_window(
                        request, "user_writes", lambda g, r: client_identity(r), fail=fail
                    )
        except ShopError as exc:
            return render_error(request, exc)
        return None


def view_option(view: Any, name: str, default: Any) -> Any:
    """A view's own throttling policy, set as an attribute of the view function or of its
    class (DRF's ``as_view()`` keeps the class as ``view.cls``): the app decides, not this
    module. ``client_write_limit = False``: not counted under ``user_writes`` (e.g. a bank's
    signed webhooks, which all come from the bank's few addresses). ``throttle_fail =
    "closed"``: refused (503) rather than limited per process while Redis is unreachable.
    ``answer_before_limits(request)`` (shop.early): a response the view gives without any
    remote work (checked before the limits, not counted by them), LIMITS_IN_VIEW when the view
    checks this request's layers itself, or None to go on as usual."""
    return getattr(view, name, getattr(getattr(view, "cls", None), name, default))


def _is_login_route(match: Any) -> bool:
    # view_name carries the namespace: the admin's login is "admin:login" (url_name "login").
    return bool(match and (match.url_name in LOGIN_ROUTES or match.view_name in LOGIN_ROUTES))


def _read_only_exempt(request: HttpRequest, match: Any) -> bool:
    if request.path_info.startswith("/admin/"):
        return True
    return bool(
        match
        and (
            match.url_name in READ_ONLY_EXEMPT_ROUTES or match.view_name in READ_ONLY_EXEMPT_ROUTES
        )
    )
