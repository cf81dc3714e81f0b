"""Shared plumbing for benchmark scenarios: a throw-away services-profile environment,
gunicorn, and a load generator (wrk when installed, a Python fallback otherwise).

Benchmarks use their own databases (``shop_bench*``) and Redis database 14, so they never
touch development or test data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RESULTS = ROOT / "bench" / "results"

BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.base",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/shop_bench",
    "ORDER_SHARD_URLS": (
        "postgres://postgres@127.0.0.1:5432/shop_bench_orders_0,"
        "postgres://postgres@127.0.0.1:5432/shop_bench_orders_1"
    ),
    "REDIS_URL": "redis://127.0.0.1:6379/14",
    "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
    "LOG_LEVEL": "WARNING",
}


def bench_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in BENCH_ENV:
        env.pop(key, None)
    env.update(BENCH_ENV)
    env.update(overrides)
    return env


def manage(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn(env: dict[str, str], *, workers: int = 2, threads: int = 1) -> Iterator[str]:
    """Serve the shop under gunicorn; yields the base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            PYTHON, "-m", "gunicorn", "config.wsgi",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "--threads", str(threads),
            "--backlog", "2048",
            "--log-level", "warning",
        ],
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


@dataclass
class LoadResult:
    name: str
    url: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    tool: str
    # Answers by kind, e.g. {"201": 9000, "409 out_of_stock": 3}; filled by scripted loads.
    statuses: dict[str, int] = field(default_factory=dict)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _wrk(
    name: str, url: str, seconds: int, connections: int, script: Path | None = None
) -> LoadResult:
    scripted = ["-s", str(script)] if script else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *scripted, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in match.groups())
    p50 = _ms(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+(\S+)", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # A script's done() may report answers as "status <label>: <count>" lines (one per thread).
    statuses: Counter[str] = Counter()
    for label, count in re.findall(r"^status (.+): (\d+)$", out, flags=re.MULTILINE):
        statuses[label] += int(count)
    return LoadResult(name, url, requests, errors, seconds, rps, p50, p99, "wrk", dict(statuses))


def _status_label(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> str:
    if headers is not None and headers.get("Idempotent-Replayed"):
        return f"{status} replayed"  # a repeated Idempotency-Key: no new effect
    if 200 <= status < 300:
        return str(status)
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"{status} {code}" if code else str(status)


def _python_load(
    name: str,
    url: str,
    seconds: int,
    connections: int,
    make_request: Callable[[], urllib.request.Request] | None = None,
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            request = make_request() if make_request else url
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    label = _status_label(response.status, response.read(), response.headers)
                    ok = 200 <= response.status < 400
            except urllib.error.HTTPError as exc:
                label, ok = _status_label(exc.code, exc.read()), False
            except OSError as exc:
                label, ok = f"socket {type(exc).__name__}", False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += not ok
                statuses[label] += 1

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - began
    latencies.sort()
    return LoadResult(
        name,
        url,
        len(latencies),
        errors,
        took,
        len(latencies) / took,
        statistics.median(latencies),
        percentile(latencies, 0.99),
        "python",
        dict(statuses) if make_request else {},
    )


def percentile(ordered: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of an ascending list (the same rank rule for every tool)."""
    return ordered[max(int(len(ordered) * fraction) - 1, 0)] if ordered else float("nan")


def load(
    name: str,
    url: str,
    *,
    seconds: int = 15,
    connections: int = 8,
    script: Path | None = None,
    make_request: Callable[[], urllib.request.Request] | None = None,
) -> LoadResult:
    """Drive ``url`` for ``seconds`` after a short warm-up; wrk if installed.

    For requests other than a plain GET give both ``script`` (a wrk Lua script) and
    ``make_request`` (what the Python fallback sends instead, one new request per call).
    """
    if shutil.which("wrk"):
        _wrk(name, url, 2, connections, script)  # warm-up: connections, caches, lazy imports
        return _wrk(name, url, seconds, connections, script)
    if script is not None and make_request is None:
        raise SystemExit(f"{name}: wrk is not installed and no Python fallback was given")
    _python_load(name, url, 2, connections, make_request)
    return _python_load(name, url, seconds, connections, make_request)


def print_table(
    rows: list[tuple[LoadResult, LoadResult]],
    *,
    rate_label: str = "req/s",
    ratio_label: str = "x trivial",
) -> None:
    """Each row is (result, the reference it is compared with: by default the trivial view
    measured on the same server in this run)."""
    width = max(8, len(rate_label) + 1)
    print(
        f"\n{'scenario':<40}{rate_label:>{width}}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{ratio_label:>11}"
    )
    for result, baseline in rows:
        ratio = result.rps / baseline.rps if baseline.rps else float("nan")
        print(
            f"{result.name:<40}{result.rps:>{width}.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
            f"{result.errors:>8}{ratio:>10.2f}x"
        )


def save(scenario: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
    return path
