"""Answers a view gives before the rest of the middleware runs: the hot refusals of a sale.

A view that can answer some requests with no remote work (a flash sale this process knows is
sold out) says so with an ``answer_before_limits(request)`` hook (see shop.throttle). During a
sale most attempts are such refusals, so they should cost what a minimal Django view costs,
not what the whole stack costs (sessions, CSRF, messages, URL resolution, rate limits, DRF):
:class:`EarlyAnswerMiddleware`, right after the security middleware, calls the hook of a write
to a route whose path has no parameters and returns the hook's response at once. What else
the hook says (None, or LIMITS_IN_VIEW) is kept on the request for ThrottleMiddleware, which
then does not ask again.

Not consulted while the read-only switch is on (ThrottleMiddleware answers 503 first, as for
every write). The refusal is still counted and timed (MetricsMiddleware is above this one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import URLResolver, get_resolver, resolve

from shop.runtime import switch_on
from shop.throttle import EARLY_RESULT, SAFE_METHODS, view_option

#: The hook's name, on the view function or its class (DRF's ``as_view()`` keeps ``cls``).
HOOK = "answer_before_limits"

Hook = Callable[[HttpRequest], Any]


def _static_paths(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, callback) of a route without parameters (a plain ``path()`` route)."""
    for pattern in patterns:
        route = getattr(pattern.pattern, "_route", None)
        if route is None or pattern.pattern.converters:
            continue
        if isinstance(pattern, URLResolver):
            yield from _static_paths(pattern.url_patterns, prefix + route)
        else:
            yield "/" + prefix + route, pattern.callback


def early_routes(urlconf: str | None = None) -> dict[str, tuple[Hook, str]]:
    """Path → (hook, route name) for every parameterless route whose view has a hook."""
    routes = {}
    for path, callback in _static_paths(get_resolver(urlconf).url_patterns):
        hook = view_option(callback, HOOK, None)
        if hook is not None:
            match = resolve(path, urlconf)
            routes[path] = (hook, match.view_name or match.route)
    return routes


class EarlyAnswerMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._routes: dict[str, tuple[Hook, str]] | None = None  # read at the first request

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method not in SAFE_METHODS:
            if self._routes is None:
                self._routes = early_routes()
            found = self._routes.get(request.path_info)
            if found is not None and not switch_on("read_only"):
                request.get_host()  # an unknown Host is a 400 here too (DisallowedHost)
                hook, route = found
                result = hook(request)
                if isinstance(result, HttpResponse):
                    request.metrics_route = route  # counted under its route, unresolved
                    return result
                setattr(request, EARLY_RESULT, result)
        return self.get_response(request)
