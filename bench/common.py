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
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
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


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _wrk(name: str, url: str, seconds: int, connections: int) -> LoadResult:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
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
    return LoadResult(name, url, requests, errors, seconds, rps, p50, p99, "wrk")


def _python_load(name: str, url: str, seconds: int, connections: int) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                    ok = 200 <= response.status < 400
            except OSError:
                ok = False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += not ok

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
        latencies[int(len(latencies) * 0.99) - 1],
        "python",
    )


def load(name: str, url: str, *, seconds: int = 15, connections: int = 8) -> LoadResult:
    """Drive ``url`` for ``seconds`` after a short warm-up; wrk if installed."""
    runner = _wrk if shutil.which("wrk") else _python_load
    runner(name, url, 2, connections)  # warm-up: connections, caches, lazy imports
    return runner(name, url, seconds, connections)


def print_table(rows: list[tuple[LoadResult, LoadResult]]) -> None:
    """Each row is (result, the trivial view measured on the same server in this run)."""
    print(f"\n{'scenario':<40}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'x trivial':>11}")
    for result, baseline in rows:
        ratio = result.rps / baseline.rps if baseline.rps else float("nan")
        print(
            f"{result.name:<40}{result.rps:>8.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
            f"{result.errors:>8}{ratio:>10.2f}x"
        )


def save(scenario: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
    return path
