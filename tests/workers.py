"""Real Celery workers and a controllable SMTP server, for tests that need the real thing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from celery import current_app
from django.conf import settings
from kombu import Connection, Exchange, Queue

ROOT = Path(__file__).resolve().parent.parent
QUEUES = list(settings.CELERY_WORKER_QUEUES)


def _db_url(db: dict) -> str:
    user = quote(db["USER"] or "")
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    auth = f"{user}{password}@" if user or password else ""
    return f"postgres://{auth}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def purge_queues() -> None:
    """Declare the shop's queues as Celery does (on a fresh broker nobody has yet) and drop
    messages left in them by earlier runs or tests."""
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=3) as connection:
        channel = connection.channel()
        for name in QUEUES:
            try:
                Queue(name, Exchange(name), routing_key=name)(channel).declare()
                channel.queue_purge(name)
            except Exception:
                channel = connection.channel()


def queue_depth(queue: str) -> int:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=3) as connection:
        channel = connection.channel()
        try:
            _, count, _ = channel.queue_declare(queue=queue, passive=True)
        except Exception:
            return 0
        return count


def test_process_env(**extra: str) -> dict[str, str]:
    """The environment of a separate process that must use this test run's databases."""
    databases = settings.DATABASES
    shards = ",".join(_db_url(databases[alias]) for alias in settings.ORDER_SHARD_ALIASES)
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _db_url(databases["default"]),
        "ORDER_SHARD_URLS": shards,
        "DB_CONN_MAX_AGE": "0",
        **extra,
    }


def django_process(code: str, **env: str) -> subprocess.Popen:
    """Run ``code`` (after django.setup()) in its own process group on the test databases."""
    script = f"import django\ndjango.setup()\n{code}"
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=test_process_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


class Worker:
    """`celery worker` in its own process group, on the test databases."""

    def __init__(self, *, queues: list[str] | None = None, **env: str) -> None:
        self.env = test_process_env(**env)
        self.queues = queues or QUEUES
        self.process: subprocess.Popen | None = None
        self.output: list[str] = []

    def start(self, timeout: float = 60) -> Worker:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker",
                "--queues", ",".join(self.queues), "--concurrency", "1", "--pool", "prefork",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--hostname", f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
                "--loglevel", "INFO",
            ],
            cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )  # fmt: skip
        ready = threading.Event()

        def pump() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                if " ready." in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError("worker did not start:\n" + "".join(self.output[-40:]))
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool: no goodbye, no acks."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for(condition: Callable[[], object], *, timeout: float = 60, every: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


class broker_pointing_to:
    """Point this process's Celery app at another broker URL (e.g. a closed port)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @staticmethod
    def _reset_pools() -> None:
        app = current_app
        app._pool = None  # kombu keeps one pool per URL; the next publish picks the right one
        app.amqp._producer_pool = None

    def __enter__(self) -> None:
        conf = current_app.conf
        self.previous = (conf.broker_url, conf.broker_write_url)
        conf.broker_url = conf.broker_write_url = self.url
        self._reset_pools()

    def __exit__(self, *exc: object) -> None:
        current_app.conf.broker_url, current_app.conf.broker_write_url = self.previous
        self._reset_pools()


class StallingSMTPServer:
    """A minimal SMTP server on loopback that counts the messages it receives. After
    :meth:`stall`, new connections hang before the greeting (a mail server gone unresponsive)
    until ``release`` is set; ``stalled_connection`` is set when one arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stalling = False
        self.release = threading.Event()
        self.stalled_connection = threading.Event()
        self.messages: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def stall(self) -> None:
        self.stalling = True

    def _session(self, conn: socket.socket) -> None:
        if self.stalling:
            self.stalled_connection.set()
            self.release.wait()
        try:
            stream = conn.makefile("rwb")

            def reply(text: str) -> None:
                stream.write(f"{text}\r\n".encode())
                stream.flush()

            reply("220 test ESMTP")
            while line := stream.readline():
                command = line.decode(errors="replace").strip().upper()
                if command.startswith("DATA"):
                    reply("354 go ahead")
                    body = []
                    while (data := stream.readline()) not in (b".\r\n", b""):
                        body.append(data.decode(errors="replace"))
                    self.messages.append("".join(body))
                    reply("250 queued")
                elif command.startswith("QUIT"):
                    reply("221 bye")
                    break
                else:
                    reply("250 ok")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.release.set()
        self.sock.close()
