"""A whole shop on its own services, for fault experiments (``pytest -m chaos``).

``ChaosStack`` starts, from the ``Procfile`` commands, every process of the services profile
(gunicorn ``web``, Celery ``worker`` and ``beat``, the sandbox ``acquirer``) against services
nothing else uses:

- PostgreSQL: fresh databases (``default`` and two order shards) on the shared server, named
  ``chaos_<pid>_<n>_*`` and dropped at the end; or, with ``own_shard=True``, shard 1 on a
  cluster of its own (``initdb`` + ``pg_ctl``), which the test may stop and start;
- Redis: a ``redis-server`` on a port of its own (no persistence), stoppable and freezable;
- RabbitMQ: a node of its own (own node name, ports and data directory), stoppable.

Everything is torn down (SIGTERM, then SIGKILL) by :meth:`ChaosStack.close`, even when the
scenario failed; the processes' output is kept in the stack's log files and the last lines
are printed when a scenario fails.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.common import free_port
from tests.workers import wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
VENV_BIN = str(Path(PYTHON).parent)
SHARED_POSTGRES = os.environ.get("CHAOS_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
PASSWORD = "chaos-pass"  # of the throw-away buyers in the throw-away databases
BUYERS = 6
# Loopback calls never go through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_COUNTER = iter(range(1, 10_000))
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def procfile(path: Path = ROOT / "Procfile") -> dict[str, str]:
    """process name → its command line, as the Procfile at the repository root has it."""
    commands = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            commands[name.strip()] = command.strip()
    return commands


def procfile_argv(name: str, env: dict[str, str]) -> list[str]:
    """The Procfile command ``name`` as an argv, with ``$VAR`` / ``${VAR:-default}`` expanded
    from ``env`` as a shell would."""

    def expand(match: re.Match) -> str:
        var = match.group(1) or match.group(3)
        return env.get(var) or (match.group(2) or "")

    return shlex.split(_VAR.sub(expand, procfile()[name]))


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False


def _stop_group(process: subprocess.Popen | None, *, timeout: float = 20) -> None:
    """SIGTERM the process group, SIGKILL it if it has not gone within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)  # a frozen process cannot die of SIGTERM
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    except OSError:
        return ""


# --- Services --------------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a port of its own, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: _port_open(self.port), timeout=30)
        return self

    def stop(self) -> None:
        """SIGTERM: Redis is gone (its data too: nothing is persisted)."""
        _stop_group(self.process)

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing ever answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)


class RabbitNode:
    """A RabbitMQ node of its own: own node name, AMQP and distribution ports, data and log
    directories (owned by the ``rabbitmq`` user, which ``rabbitmq-server`` runs as)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"chaos-{os.getpid()}-{next(_COUNTER)}@localhost"
        self.dir = workdir / "rabbitmq"
        self.log = self.dir / "server.out"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> RabbitNode:
        first = not self.dir.exists()
        if first:
            (self.dir / "mnesia").mkdir(parents=True)
            (self.dir / "log").mkdir()
            (self.dir / "plugins").write_text("")
            (self.dir / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
            )
            if os.geteuid() == 0:
                shutil.chown(self.dir.parent, "rabbitmq")
                for path in [self.dir, *self.dir.rglob("*")]:
                    shutil.chown(path, "rabbitmq")
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "plugins"),
        }
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"], env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.dir,
            )  # fmt: skip
        # Up, or dead early: either way no need to wait any longer.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: _port_open(self.port) or self.process.poll() is not None, timeout=90)
        if not _port_open(self.port):
            node_log = self.dir / "log" / f"{self.name}.log"
            raise RuntimeError(
                f"RabbitMQ node {self.name} did not start (exit code {self.process.poll()}):\n"
                f"{_tail(self.log)}\n--- {node_log.name} ---\n{_tail(node_log)}"
            )
        return self

    def _groups(self) -> set[int]:
        """Process groups of this node: ``rabbitmq-server`` switches to the ``rabbitmq`` user
        in a session of its own, so they are found by the node name in their environment."""
        marker = f"RABBITMQ_NODENAME={self.name}\0".encode()
        groups = set()
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes():
                    groups.add(os.getpgid(int(environ.parent.name)))
            except OSError:
                continue
        return groups

    def _signal(self, signum: int) -> None:
        for group in self._groups():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signum)

    def stop(self, *, timeout: float = 30) -> None:
        """SIGTERM the node (SIGKILL after ``timeout`` s); returns once its port is closed."""
        self._signal(signal.SIGTERM)
        with contextlib.suppress(AssertionError):  # still up after the timeout: killed below
            wait_for(lambda: not _port_open(self.port), timeout=timeout)
        self.kill()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        wait_for(lambda: not _port_open(self.port), timeout=30)


class Blackhole:
    """A TCP endpoint on ``port`` that accepts connections and never answers: a network
    partition, as a client sees it (connects, then waits for its own timeouts)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.held: list[socket.socket] = []
        self.port = port
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        """Stop listening and drop the held connections; returns once the port is free.

        A plain ``close()`` would not do: the accepting thread, blocked in ``accept()``, keeps
        the listening socket alive in the kernel, so the port stays taken (and answering) until
        the next client connects -- a node restarted on it fails to bind."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (EINVAL)
        self.sock.close()
        self.thread.join(timeout=10)
        for conn in self.held:
            conn.close()
        wait_for(lambda: not _port_open(self.port), timeout=30)


class PostgresCluster:
    """A PostgreSQL cluster of its own (``initdb`` + ``pg_ctl``) on its own port, trusting
    local connections; run as ``postgres`` when we are root (initdb refuses root)."""

    def __init__(self, workdir: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.dir = workdir / "pgcluster"
        self.data = self.dir / "data"
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}"

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, cwd="/tmp", timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresCluster:
        if not self.data.exists():
            self.dir.mkdir(parents=True)
            if self.prefix:
                shutil.chown(self.dir.parent, "postgres")
                shutil.chown(self.dir, "postgres")
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip
        return self

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server is gone at once, as after a crash (it recovers at start)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")


def _create_databases(server_url: str, names: list[str]) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')


def _drop_databases(server_url: str, names: list[str]) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- Processes -------------------------------------------------------------------------------


class Process:
    """One Procfile process, in a process group of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Process:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        _stop_group(self.process)

    def kill(self) -> None:
        """SIGKILL the whole group (a Celery worker's pool too): no goodbye, no acks."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def children(self) -> list[int]:
        """The pids of the process's direct children (gunicorn's workers, Celery's pool)."""
        try:
            text = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]


# --- HTTP ------------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, body: Any, headers: dict[str, str], seconds: float) -> None:
        self.status, self.body, self.headers, self.seconds = status, body, headers, seconds

    def __repr__(self) -> str:
        return f"<{self.status} {str(self.body)[:300]}>"


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Answer:
    """One request; HTTP errors are answers (status, JSON or text), connection errors raise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    started = time.monotonic()
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            status, heads, raw = answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        status, heads, raw = error.code, dict(error.headers), error.read()
    text = raw.decode(errors="replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = text
    return Answer(status, decoded, heads, time.monotonic() - started)


class Buyer:
    """An API client with its token; writes carry an ``Idempotency-Key``."""

    def __init__(self, stack: ChaosStack, info: dict) -> None:
        self.stack, self.id, self.token = stack, info["id"], info["token"]
        self.alias = info["alias"]

    def call(self, method: str, path: str, body: Any = None, *, key: str | None = None,
             timeout: float = 30) -> Answer:  # fmt: skip
        headers = {"Authorization": f"Token {self.token}"}
        if key:
            headers["Idempotency-Key"] = key
        return http(method, self.stack.url + path, body, headers=headers, timeout=timeout)

    def checkout(self, sku: str, quantity: int = 1, *, key: str | None = None) -> Answer:
        return self.call("POST", "/api/v1/orders/", {"items": [{"sku": sku, "quantity": quantity}]},
                         key=key or uuid.uuid4().hex)  # fmt: skip

    def pay(self, order_id: int, method: str = "wallet", *, key: str | None = None,
            channel: str | None = None) -> Answer:  # fmt: skip
        body = {"method": method, **({"channel": channel} if channel else {})}
        return self.call("POST", f"/api/v1/orders/{order_id}/payments/", body,
                         key=key or uuid.uuid4().hex)  # fmt: skip

    def order(self, order_id: int) -> Answer:
        return self.call("GET", f"/api/v1/orders/{order_id}/")


def latency_line(label: str, answers: list[Answer]) -> str:
    """``label: n requests, p50 … ms, p99 … ms`` (printed, never asserted)."""
    if not answers:
        return f"{label}: no requests"
    ms = sorted(a.seconds * 1000 for a in answers)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    return f"{label}: {len(ms)} requests, p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms"


# --- The stack -------------------------------------------------------------------------------


class ChaosStack:
    """Services and Procfile processes for one scenario; see the module docstring.

    ``env`` overrides the processes' environment (short grace periods and sweep intervals,
    an SMTP server, ...)."""

    def __init__(self, *, own_shard: bool = False, **env: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="shop-chaos-"))
        os.chmod(self.tmp, 0o755)
        self.prefix = f"chaos_{os.getpid()}_{next(_COUNTER)}"
        # With own_shard, orders_0 (the first shard every loop visits) is on its own cluster.
        self.names = [f"{self.prefix}_default", f"{self.prefix}_orders_1"]
        self.shard_name = f"{self.prefix}_orders_0"
        self.own_shard_alias = "orders_0"
        self.shard_down = False
        self.cluster = PostgresCluster(self.tmp) if own_shard else None
        self.redis = RedisServer(self.tmp)
        self.broker = RabbitNode(self.tmp)
        self.web_port = free_port()
        self.acquirer_port = free_port()
        self.extra_env = env
        self.processes: dict[str, Process] = {}
        self.buyers: list[Buyer] = []
        self.skus: list[str] = []
        self.databases_created = False

    # URLs
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def acquirer_url(self) -> str:
        return f"http://127.0.0.1:{self.acquirer_port}"

    def database_urls(self) -> dict[str, str]:
        shard_server = self.cluster.url if self.cluster else SHARED_POSTGRES
        return {
            "default": f"{SHARED_POSTGRES}/{self.names[0]}",
            "orders_0": f"{shard_server}/{self.shard_name}",
            "orders_1": f"{SHARED_POSTGRES}/{self.names[1]}",
        }

    @property
    def env(self) -> dict[str, str]:
        urls = self.database_urls()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTEST_", "DJANGO_", "CELERY_", "REDIS_", "DATABASE_"))
        }
        env.update(
            {
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
                "DJANGO_SETTINGS_MODULE": "config.settings.base",
                "DEBUG": "false",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DATABASE_URL": urls["default"],
                "ORDER_SHARD_URLS": f"{urls['orders_0']},{urls['orders_1']}",
                "REDIS_URL": self.redis.url,
                "CELERY_BROKER_URL": self.broker.url,
                "ACQUIRER_URL": self.acquirer_url,
                "ACQUIRER_PORT": str(self.acquirer_port),
                "SHOP_WEBHOOK_URL": f"{self.url}/api/v1/payments/webhooks",
                "PORT": str(self.web_port),
                "WEB_CONCURRENCY": "2",
                "SHOP_VAR_DIR": str(self.tmp / "var"),
                "LOG_LEVEL": "INFO",
                "DB_CONNECT_TIMEOUT": "2",
                # Short loops, so recovery is seen within a test's patience.
                "ORPHAN_RESERVATION_GRACE": "5",
                "ORDER_EXPIRY_SWEEP_SECONDS": "2",
                "OUTBOX_RELAY_SECONDS": "1",
                "TCC_RECOVERY_SECONDS": "2",
                "TCC_RETRY_INITIAL": "1",
                "TCC_RETRY_MAX": "4",
                "BREAKER_RESET_TIMEOUT": "3",
                "CACHE_DOWN_BACKOFF": "1",
                "OUTBOX_BROKER_BACKOFF": "1",
                "RUNTIME_CONFIG_TTL": "1",
            }
        )
        env.update(self.extra_env)
        return env

    # Life cycle
    def start(self) -> ChaosStack:
        self.redis.start()
        self.broker.start()
        _create_databases(SHARED_POSTGRES, self.names + ([] if self.cluster else [self.shard_name]))
        if self.cluster:
            self.cluster.start()
            _create_databases(self.cluster.url, [self.shard_name])
        self.databases_created = True
        self.manage("migrate_all")
        self.manage("seed_demo", "--products", "3", "--users", str(BUYERS), "--password", PASSWORD)
        self.buyers = [Buyer(self, info) for info in self._buyer_infos()]
        self.skus = self._sku_codes()
        if len(self.skus) < 2:
            raise RuntimeError(f"the seed left {len(self.skus)} SKUs with stock")
        self.start_process("acquirer", "--db", str(self.tmp / "acquirer.sqlite3"))
        wait_for(lambda: _port_open(self.acquirer_port), timeout=60)
        self.start_process("worker")
        self.start_process("beat")
        self.start_web()
        return self

    def start_process(self, name: str, *extra: str) -> Process:
        process = Process(
            name, procfile_argv(name, self.env) + list(extra), self.env, self.tmp / f"{name}.log"
        ).start()
        self.processes[name] = process
        return process

    def start_web(self) -> None:
        self.start_process("web")
        wait_for(self.healthy, timeout=90, every=0.3)

    def healthy(self) -> bool:
        try:
            return http("GET", f"{self.url}/healthz", timeout=2).status == 200
        except OSError:
            return False

    def close(self) -> None:
        # Nothing of the stack outlives it, so no need for patience: SIGTERM, SIGKILL soon after.
        for process in reversed(list(self.processes.values())):
            _stop_group(process.process, timeout=5)
        self.redis.stop()
        with contextlib.suppress(Exception):
            self.broker.kill()
        if self.databases_created:
            with contextlib.suppress(Exception):
                _drop_databases(SHARED_POSTGRES, self.names)
            if not self.cluster:
                with contextlib.suppress(Exception):
                    _drop_databases(SHARED_POSTGRES, [self.shard_name])
        if self.cluster:
            with contextlib.suppress(Exception):
                self.cluster.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def logs(self, lines: int = 25) -> str:
        names = [*self.processes, "redis", "rabbitmq/server"]
        return "\n".join(
            f"--- {name} ---\n{_tail(self.tmp / f'{name}.log', lines)}" for name in names
        )

    # Commands
    def manage(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result

    def shell(self, code: str) -> Any:
        """Run ``code`` in ``manage.py shell`` on the stack; it must print one JSON line last."""
        out = self.manage("shell", "-c", code).stdout.strip().splitlines()
        return json.loads(out[-1])

    def _buyer_infos(self) -> list[dict]:
        return self.shell(
            "import json; from bench.common import shop_buyers; "
            "from apps.payments.services.ledger import wallet_topup; "
            f"buyers = shop_buyers({BUYERS}); "
            # Enough for every order a scenario places (a demo product costs up to ~€1,500).
            "[wallet_topup(user_id=b['id'], amount=10_000_000, currency='EUR', "
            "reference=f\"chaos:{b['id']}\", actor='chaos') for b in buyers]; "
            "print(json.dumps(buyers))"
        )

    def _sku_codes(self) -> list[str]:
        return self.shell(
            "import json; from apps.catalog.models import Sku; "
            "from bench.common import shop_stock_at_least; "
            "skus = list(Sku.objects.order_by('id')); "
            "shop_stock_at_least(skus, floor=200, target=200); "
            "print(json.dumps([sku.code for sku in skus]))"
        )

    def sql(self, alias: str, query: str, *params: object) -> list[tuple]:
        """Rows of ``query`` on one database of the stack (``default``, ``orders_0/1``)."""
        with psycopg.connect(self.database_urls()[alias], autocommit=True, connect_timeout=5) as c:
            return c.execute(query, params).fetchall()

    def sql_shards(self, query: str, *params: object) -> list[tuple]:
        """Rows of ``query`` on every order shard that is up."""
        aliases = ["orders_1"] if self.shard_down else ["orders_0", "orders_1"]
        return [row for alias in aliases for row in self.sql(alias, query, *params)]

    def stop_shard(self) -> None:
        """Stop the own cluster (shard ``orders_0``) at once, as in a crash."""
        self.shard_down = True
        self.cluster.stop()

    def start_shard(self) -> None:
        self.cluster.start()
        self.shard_down = False

    def count_everywhere(self, query: str) -> dict[str, int]:
        """``query`` (``SELECT key, count(*) ... GROUP BY key`` on one table) summed over every
        database of the stack holding that table; the table is the word after FROM."""
        table = re.search(r"from (\w+)", query, re.IGNORECASE).group(1)
        totals: dict[str, int] = {}
        for alias in ("default", "orders_1") if self.shard_down else self.database_urls():
            if self.sql(alias, "SELECT to_regclass(%s)", table)[0][0] is None:
                continue
            for key, count in self.sql(alias, query):
                totals[str(key)] = totals.get(str(key), 0) + count
        return totals

    def bank_payments(self) -> list[sqlite3.Row]:
        """The acquirer's own rows (channel, payment_id, status, amount, captured_amount...)."""
        with contextlib.closing(sqlite3.connect(self.tmp / "acquirer.sqlite3", timeout=10)) as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM payments").fetchall()

    def counts(self) -> dict[str, Any]:
        """Exact counts a scenario ends by printing."""
        bank = self.bank_payments()
        return {
            "orders": self.count_everywhere("SELECT status, count(*) FROM orders_order GROUP BY 1"),
            "payments": self.count_everywhere(
                "SELECT method || ':' || status, count(*) FROM payments_payment GROUP BY 1"
            ),
            "bank_captures": sum(1 for row in bank if row["captured_amount"] > 0),
            "bank_over_captured": sum(1 for row in bank if row["captured_amount"] > row["amount"]),
            "outbox_backlog": sum(
                self.count_everywhere(
                    "SELECT 'backlog', count(*) FROM shop_outboxmessage WHERE published_at IS NULL"
                ).values()
            ),
        }

    def acquirer(self, method: str, path: str, body: Any = None) -> Answer:
        return http(method, self.acquirer_url + path, body, timeout=10)

    def audit(self) -> subprocess.CompletedProcess:
        """``manage.py audit_invariants`` with the stack's environment."""
        return self.manage("audit_invariants", check=False)


@contextlib.contextmanager
def chaos_stack(**kwargs: Any) -> Iterator[ChaosStack]:
    stack = ChaosStack(**kwargs)
    try:
        stack.start()
        yield stack
    except BaseException:
        print(f"\n=== last lines of the chaos stack's processes ===\n{stack.logs()}")
        raise
    finally:
        stack.close()


def eventually(condition: Callable[[], object], *, timeout: float = 60, what: str = "") -> object:
    """``wait_for`` with a message saying what did not happen."""
    try:
        return wait_for(condition, timeout=timeout, every=0.3)
    except AssertionError as error:
        raise AssertionError(f"not within {timeout}s: {what}") from error


def in_parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads; their results (or exceptions) in order."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
