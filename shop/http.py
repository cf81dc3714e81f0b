"""The one outbound HTTP client: JSON in and out, explicit connect and read timeouts.

It raises :class:`HttpTimeout` when the answer did not arrive in time and :class:`HttpNoAnswer`
when the peer hung up without answering (in both cases the request may have taken effect), and
:class:`HttpUnavailable` when the peer could not be reached at all (it did not). It never
retries: callers combine it with a breaker and a retry policy (``shop.resilience``).

With ``keep_alive=True`` (the card channels: two calls per payment to the same bank) the
connection is kept for the next call to the same host instead of being closed. Kept connections
live in this process's pool, :data:`pool`: a thread takes one out and uses it alone, so no
connection ever carries two requests at once, and it goes back only after a complete answer
that does not close it. A kept connection is checked before reuse (one the peer has closed,
or that sat idle longer than KEEPALIVE_IDLE_SECONDS, is dropped), so a request is not sent
into a dead socket; the rare one that still meets a peer hanging up at that moment is an
HttpNoAnswer, as for any hang-up (the caller's recovery asks the peer what happened).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: A kept connection idle for longer is closed rather than reused: servers drop idle
#: connections after a few seconds (gunicorn 2 s, nginx 75 s; the sandbox acquirer 120 s), and
#: under load a connection is reused within milliseconds anyway.
KEEPALIVE_IDLE_SECONDS = 1.5
#: Idle connections kept per host and process; with gthread at most WEB_THREADS are busy at once.
POOL_MAX_IDLE = 64


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


PoolKey = tuple[str, str, int | None]


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept connection is unusable: no socket, or readable (an idle HTTP/1.1
    connection has nothing to read unless the peer closed it or sent garbage)."""
    if connection.sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(connection.sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class ConnectionPool:
    """This process's idle keep-alive connections by (scheme, host, port). Thread-safe: the
    lock guards only the idle lists; a taken connection belongs to its thread until given
    back. After a fork the child starts empty (the parent's sockets are not shared)."""

    def __init__(self, max_idle: int = POOL_MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: dict[PoolKey, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._pid = os.getpid()
        self.made = 0  # connections opened for this pool's callers (tests, diagnostics)

    def take(self, key: PoolKey) -> http.client.HTTPConnection | None:
        """A live idle connection to ``key``'s host (the most recently used), or None."""
        stale = []
        found = None
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid, self.made = {}, os.getpid(), 0
            idle = self._idle.get(key, [])
            now = time.monotonic()
            while idle:
                since, connection = idle.pop()
                if now - since > KEEPALIVE_IDLE_SECONDS or _dropped(connection):
                    stale.append(connection)
                    continue
                found = connection
                break
        for connection in stale:
            connection.close()
        return found

    def give(self, key: PoolKey, connection: http.client.HTTPConnection) -> None:
        """Keep ``connection`` (after a complete answer) for the next call to its host."""
        with self._lock:
            idle = self._idle.setdefault(key, []) if self._pid == os.getpid() else None
            if idle is not None and len(idle) < self.max_idle:
                idle.append((time.monotonic(), connection))
                return
        connection.close()

    def counted(self) -> None:
        with self._lock:
            self.made += 1

    def idle(self, key: PoolKey) -> int:
        with self._lock:
            return len(self._idle.get(key, []))

    def clear(self) -> None:
        """Close every idle connection (tests; a process that wants fresh connections)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, connection in connections:
                connection.close()


pool = ConnectionPool()


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    connect_timeout: float,
    read_timeout: float,
    headers: dict[str, str] | None = None,
    keep_alive: bool = False,
) -> HttpResponse:
    parts = urlsplit(url)
    key: PoolKey = (parts.scheme, parts.hostname or "", parts.port)
    connection = pool.take(key) if keep_alive else None
    if connection is None:
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(parts.hostname, parts.port, timeout=connect_timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json", **(headers or {})}
    if payload is not None:
        all_headers["Content-Type"] = "application/json"
    kept = False
    try:
        if connection.sock is None:
            try:
                connection.connect()
            except (TimeoutError, OSError) as exc:
                raise HttpUnavailable(f"cannot connect to {parts.netloc}: {exc}") from exc
            if keep_alive:
                pool.counted()
        connection.sock.settimeout(read_timeout)
        try:
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            raw = response.read()
        except TimeoutError as exc:
            raise HttpTimeout(f"{method} {url}: no answer within {read_timeout} s") from exc
        except (http.client.RemoteDisconnected, http.client.HTTPException, OSError) as exc:
            raise HttpNoAnswer(f"{method} {url}: {exc}") from exc
        kept = keep_alive and not response.will_close
    finally:
        if kept:
            pool.give(key, connection)
        else:
            connection.close()
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return HttpResponse(response.status, parsed, dict(response.getheaders()))
