"""The outbound HTTP client's kept-alive connections (shop.http.pool), against a real local
HTTP/1.1 server: shared by threads without crossing answers, reused, and never reused once the
peer closed them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shop import http as shop_http
from shop.http import http_json
from tests.workers import wait_for


class _Echo(BaseHTTPRequestHandler):
    """Answers a POST with its JSON body plus the client port it came from (one port per
    connection); ``/close`` answers, then closes the connection without saying so."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.ports.append(self.client_address[1])
        raw = json.dumps({"echo": body, "port": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self.wfile.flush()
        if self.path == "/close":
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.ports: list[int] = []
        self.closed: list[int] = []  # client ports of the connections this server hung up

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        port = request.getpeername()[1]
        super().shutdown_request(request)
        with self.lock:
            self.closed.append(port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    shop_http.pool.clear()
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    shop_http.pool.clear()


def _post(url: str, body: dict, *, keep_alive: bool = True) -> dict:
    response = http_json(
        "POST", url, body, connect_timeout=2, read_timeout=5, keep_alive=keep_alive
    )
    assert response.status == 200
    return response.body


def test_threads_share_kept_connections_and_each_gets_its_own_answer(server):
    threads, calls = 8, 25
    made_before = shop_http.pool.made
    start = threading.Barrier(threads)

    def run(thread: int) -> list[tuple[dict, dict]]:
        start.wait()
        sent = [{"thread": thread, "call": n} for n in range(calls)]
        return [(body, _post(f"{server.url}/echo", body)) for body in sent]

    with ThreadPoolExecutor(max_workers=threads) as executor:
        results = [pair for part in executor.map(run, range(threads)) for pair in part]

    # every answer is the one to its own request: no connection carried two at once
    assert len(results) == threads * calls
    assert all(answer["echo"] == sent for sent, answer in results)
    # connections were kept and reused: at most one per thread in flight, not one per call
    connections = set(server.ports)
    assert len(server.ports) == threads * calls
    assert len(connections) <= threads
    assert shop_http.pool.made - made_before == len(connections)
    assert shop_http.pool.idle(("http", "127.0.0.1", server.server_address[1])) == len(connections)


def test_a_connection_the_peer_closed_is_not_reused(server):
    first = _post(f"{server.url}/close", {"n": 1})  # the server hangs up after this answer
    # (the hang-up follows the answer: a request sent in between would meet it, as the module
    # says -- this test is about the connection the peer has already closed)
    wait_for(lambda: first["port"] in server.closed, timeout=5)

    second = _post(f"{server.url}/echo", {"n": 2})  # no HttpNoAnswer from a dead socket

    assert second["echo"] == {"n": 2}
    assert second["port"] != first["port"]


def test_a_connection_idle_too_long_is_not_reused(server, monkeypatch):
    monkeypatch.setattr(shop_http, "KEEPALIVE_IDLE_SECONDS", -1.0)  # everything is too old

    ports = {_post(f"{server.url}/echo", {"n": n})["port"] for n in range(3)}

    assert len(ports) == 3


def test_without_keep_alive_nothing_is_kept(server):
    ports = {_post(f"{server.url}/echo", {"n": n}, keep_alive=False)["port"] for n in range(3)}

    assert len(ports) == 3
    assert shop_http.pool.idle(("http", "127.0.0.1", server.server_address[1])) == 0
