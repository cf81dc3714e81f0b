"""The one outbound HTTP client: JSON in and out, explicit connect and read timeouts.

It raises :class:`HttpTimeout` when the answer did not arrive in time and :class:`HttpNoAnswer`
when the peer hung up without answering (in both cases the request may have taken effect), and
:class:`HttpUnavailable` when the peer could not be reached at all (it did not). It never
retries: callers combine it with a breaker and a retry policy (``shop.resilience``).
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class HttpError(Exception):
    """No usable HTTP answer."""


class HttpTimeout(HttpError):
    """The request went out but no answer came within the read timeout."""


class HttpUnavailable(HttpError):
    """The peer could not be reached: the request never went out."""


class HttpNoAnswer(HttpError):
    """The request went out but the peer hung up without answering: it may have acted."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON
    headers: dict[str, str]


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    connect_timeout: float,
    read_timeout: float,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname, parts.port, timeout=connect_timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json", **(headers or {})}
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    try:
        try:
            connection.connect()
        except (TimeoutError, OSError) as exc:
            raise HttpUnavailable(f"cannot connect to {parts.netloc}: {exc}") from exc
        connection.sock.settimeout(read_timeout)
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError as exc:
            raise HttpTimeout(f"{method} {url}: no answer within {read_timeout} s") from exc
        except (http.client.RemoteDisconnected, OSError) as exc:
            raise HttpNoAnswer(f"{method} {url}: {exc}") from exc
    finally:
        connection.close()
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return HttpResponse(response.status, parsed, dict(response.getheaders()))
