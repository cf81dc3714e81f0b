"""Structured logs that follow one request, order or payment across web and worker processes.

The *log context* is a small dict of ids — ``request_id``, ``user_id``, ``order_id``,
``payment_id``, and ``task`` / ``task_id`` inside a Celery task — held in a context variable,
so every thread (and eager task) sees its own. Code adds ids as it learns them
(:func:`log_context_bind`); :class:`LogContextFilter` copies them onto every log record and
the two formatters print them: :class:`JsonFormatter` (one JSON object per line, production)
and :class:`ReadableFormatter` (development).

Where the ids come from:

* :class:`RequestIdMiddleware` (first in MIDDLEWARE) starts a fresh context per request with
  the caller's ``X-Request-ID`` when it is sane, a new id otherwise, echoes it in the response
  and binds the session's user; ``shop.authentication`` binds API token users.
* Services bind the order id once it is drawn and the payment id once it is created.
* :func:`celery_log_context_connect` carries the ids into tasks: the publisher's context
  travels in the ``shop_log_context`` message header; the task restores it (plus any
  ``order_id`` / ``payment_id`` / ``user_id`` among its kwargs) and gives the previous context
  back when it ends — in eager mode that is the request's own. The outbox stores the context
  with each row and publishes it as that header, so a task the relay publishes minutes later,
  from another process, still carries the id of the request that caused it.

Ids are kept as strings: order and payment ids are 64-bit, beyond what JSON tooling reading
numbers as doubles represents exactly (the API sends them as strings for the same reason).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from django.conf import settings
from django.core.signals import request_finished
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-ID"
# Message header that carries the publisher's context to the task (see the module docstring).
CELERY_HEADER = "shop_log_context"
# The ids handed on to work done elsewhere (tasks, outbox rows). The task fields are not:
# every task names itself.
CARRIED_FIELDS = ("request_id", "user_id", "order_id", "payment_id")
TASK_FIELDS = ("task", "task_id")
FIELDS = CARRIED_FIELDS + TASK_FIELDS
# Task kwargs that name what the task is about; they override carried ids of the same name.
_TASK_KWARG_IDS = ("user_id", "order_id", "payment_id")
# Client-chosen ids are echoed into logs and response headers: short, and nothing that could
# forge a log line or a header (no spaces, quotes, newlines).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_READABLE_LABELS = {
    "request_id": "req",
    "user_id": "user",
    "order_id": "order",
    "payment_id": "payment",
    "task": "task",
}

# One variable holding a dict that is replaced, never changed in place: a snapshot and its
# restore are a single get and set, so a task can hand back exactly the context it found.
_context: ContextVar[Mapping[str, str]] = ContextVar(
    "shop_log_context", default=MappingProxyType({})
)


# --- The context ---------------------------------------------------------------------------------


def _merged(base: Mapping[str, str], ids: Mapping[str, Any]) -> dict[str, str]:
    merged = dict(base)
    for name, value in ids.items():
        if name not in FIELDS:
            raise ValueError(f"unknown log context field {name!r}")
        if value is None or value == "":
            merged.pop(name, None)
        else:
            merged[name] = str(value)
    return merged


def log_context_bind(**ids: Any) -> None:
    """Add ids to the current context (``None`` removes one). Lasts until the request or task
    ends, or the enclosing :func:`log_context` block exits."""
    _context.set(_merged(_context.get(), ids))


@contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Add ids for the duration of the block, then restore exactly what was there before."""
    token = _context.set(_merged(_context.get(), ids))
    try:
        yield
    finally:
        _context.reset(token)


def log_context_current() -> dict[str, str]:
    """A copy of the current context."""
    return dict(_context.get())


def log_context_carry() -> dict[str, str]:
    """The ids to hand to work done elsewhere (a task, an outbox row)."""
    current = _context.get()
    return {name: current[name] for name in CARRIED_FIELDS if name in current}


def log_context_clear() -> None:
    _context.set({})


def _log_context_replace(ids: Mapping[str, str]) -> None:
    _context.set(dict(ids))


# --- Web requests --------------------------------------------------------------------------------


def request_id_new() -> str:
    # 32 hex digits like a uuid4's, unique enough for a log id (not a secret): random's
    # generator, re-seeded in every forked worker, costs no system call.
    return f"{random.getrandbits(128):032x}"


def request_id_accept(value: str | None) -> str:
    """The caller's request id if it is sane (1-64 of ``A-Za-z0-9._:-``), else a new one."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return request_id_new()


class RequestIdMiddleware:
    """Gives each request a fresh log context with its request id, echoed in ``X-Request-ID``.

    First in MIDDLEWARE, so every line logged while answering — a 429 or 503 from the layers
    below included — carries the id. The context is cleared when the response is finished
    (``request_finished``) rather than when this middleware returns, because Django logs 4xx
    and 5xx responses after the middleware chain has returned.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_accept(request.META.get("HTTP_X_REQUEST_ID"))
        request.request_id = request_id
        _log_context_replace({"request_id": request_id})
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response

    def process_view(self, request: HttpRequest, *args: Any) -> None:
        # Session users are known once AuthenticationMiddleware has run. Only with a session
        # cookie: reading the session otherwise would add `Vary: Cookie` to shareable pages.
        # API token users are bound by shop.authentication when DRF authenticates them.
        if settings.SESSION_COOKIE_NAME not in request.COOKIES:
            return None
        try:
            user = getattr(request, "user", None)
            if user is not None and user.is_authenticated:
                log_context_bind(user_id=user.pk)
        except DatabaseError:
            pass  # best effort: the view reports the outage (503), not the log context
        return None


def _request_finished(**kwargs: Any) -> None:
    log_context_clear()


request_finished.connect(_request_finished, dispatch_uid="shop.logs.request_finished")


# --- Log records -----------------------------------------------------------------------------


class LogContextFilter(logging.Filter):
    """Copies the log context onto each record as attributes (``record.request_id`` ...).

    Attach it to handlers, not loggers: a handler's filters see every record that reaches it,
    including those propagated from child loggers. An id passed explicitly with
    ``extra={...}`` wins over the context.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_shop_log_context", False):
            return True
        current = _context.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, current.get(name))
        # Celery logs "Task … received" in the worker's main process, outside any task
        # context; its record data still names the task.
        data = getattr(record, "data", None)
        if isinstance(data, dict) and record.task_id is None and data.get("id"):
            record.task_id = data.get("id")
            record.task = record.task or data.get("name")
        record._shop_log_context = True
        return True


_filter = LogContextFilter()


# Answers a sale gives by the thousand every second and the metrics count already (sold out,
# over the limit, rate limited): Django would log each as a WARNING on django.request.
EXPECTED_REFUSALS = frozenset({409, 429})


class ExpectedRefusalFilter(logging.Filter):
    """Drops django.request's warning for an expected refusal (EXPECTED_REFUSALS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "status_code", None) not in EXPECTED_REFUSALS


def record_ids(record: logging.LogRecord) -> dict[str, str]:
    """The ids of ``record`` (from the filter, or the current context if none ran)."""
    _filter.filter(record)
    ids = {}
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None and value != "":
            ids[name] = str(value)
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, the ids that are set,
    and ``exc`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **record_ids(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ReadableFormatter(logging.Formatter):
    """``2026-11-30 05:00:00,123 INFO    apps.orders.services [req=… user=7 order=…]: …``"""

    default_format = "%(asctime)s %(levelname)-7s %(name)s%(log_ids)s: %(message)s"

    def __init__(self, fmt: str | None = None, datefmt: str | None = None, **kwargs: Any) -> None:
        super().__init__(fmt or self.default_format, datefmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        ids = record_ids(record)
        if "task" in ids:
            ids["task"] = ids["task"].rsplit(".", 1)[-1]  # the dotted path is in JSON
        labels = [f"{label}={ids[name]}" for name, label in _READABLE_LABELS.items() if name in ids]
        record.log_ids = f" [{' '.join(labels)}]" if labels else ""
        return super().format(record)


def log_formatter(name: str) -> logging.Formatter:
    """The formatter named by LOG_FORMAT."""
    return JsonFormatter() if name == "json" else ReadableFormatter()


# --- Celery ----------------------------------------------------------------------------------


def _on_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    # An explicit header wins: the outbox relay publishes the context stored with the row,
    # not its own.
    if headers is not None and CELERY_HEADER not in headers:
        headers[CELERY_HEADER] = log_context_carry()


def _carried(request: Any) -> Mapping[str, Any] | None:
    carried = getattr(request, CELERY_HEADER, None)
    if carried is None:
        carried = (getattr(request, "headers", None) or {}).get(CELERY_HEADER)
    return carried if isinstance(carried, Mapping) else None


def _on_task_start(
    task_id: str | None = None, task: Any = None, kwargs: Mapping[str, Any] | None = None, **_: Any
) -> None:
    request = task.request
    previous = _context.get()
    request.shop_log_previous = previous
    carried = _carried(request)
    if carried is not None:
        base = {name: carried[name] for name in CARRIED_FIELDS if carried.get(name) is not None}
    elif request.is_eager:
        base = {name: previous[name] for name in CARRIED_FIELDS if name in previous}
    else:
        base = {}  # a beat task or a message from an older publisher: nothing to inherit
    about = {name: (kwargs or {}).get(name) for name in _TASK_KWARG_IDS}
    ids = {**base, **{k: v for k, v in about.items() if v is not None}}
    _log_context_replace(_merged({}, {**ids, "task": task.name, "task_id": task_id}))


def _on_task_end(task: Any = None, **_: Any) -> None:
    previous = getattr(task.request, "shop_log_previous", None)
    _log_context_replace(previous if previous is not None else {})


def _format_celery_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    """Celery replaces the root logger's handlers in the worker and beat (and gives its task
    logger its own); put the shop's filter and formatter on them so its own lines ("Task …
    received / succeeded") carry the ids too."""
    if logger is None:
        return
    for handler in logger.handlers:
        if not any(isinstance(f, LogContextFilter) for f in handler.filters):
            handler.addFilter(LogContextFilter())
        if not isinstance(handler.formatter, JsonFormatter | ReadableFormatter):
            handler.setFormatter(log_formatter(settings.LOG_FORMAT))


def celery_log_context_connect() -> None:
    """Wire the log context into Celery (called once by config.celery)."""
    from celery import signals

    uid = "shop.logs"
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid=f"{uid}.publish")
    signals.task_prerun.connect(_on_task_start, weak=False, dispatch_uid=f"{uid}.prerun")
    signals.task_postrun.connect(_on_task_end, weak=False, dispatch_uid=f"{uid}.postrun")
    signals.after_setup_logger.connect(
        _format_celery_logger, weak=False, dispatch_uid=f"{uid}.logger"
    )
    signals.after_setup_task_logger.connect(
        _format_celery_logger, weak=False, dispatch_uid=f"{uid}.task_logger"
    )
