"""Shared plumbing for benchmark scenarios: a throw-away services-profile environment,
gunicorn, and a load generator (wrk when installed, a Python fallback otherwise).

Benchmarks use their own databases (``shop_bench*``) and Redis database 14, so they never
touch development or test data (``BENCH_DATABASE``, ``BENCH_REDIS_URL`` and ``BENCH_BROKER_URL``
move them).

Profiling: with ``BENCH_PROFILE=DIR`` every timed load on the shop's gunicorn is recorded by
py-spy (one worker, wall-clock samples, idle included) as ``DIR/<scenario>[-<tag>].svg`` (tag:
``BENCH_PROFILE_TAG``); ``BENCH_PROFILE_ONLY`` (a regular expression) limits it to the scenarios
whose name it finds; ``BENCH_PROFILE_NAMES`` (JSON, {regular expression: file name}) profiles only
the scenarios one finds, each under the name given.
Summary: with ``BENCH_SUMMARY=FILE`` each script appends its headline rows to FILE (JSON lines,
``summary_rows``), which ``bench/all.py`` collects into one table.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PASSWORD = "benchpass"  # of the bench-only buyers in the bench databases
RESULTS = ROOT / "bench" / "results"
WARMUP_SECONDS = 2  # every scenario is driven this long, unmeasured, before its timed run

# Where the benchmarks keep their data. BENCH_DATABASE (a name prefix), BENCH_REDIS_URL and
# BENCH_BROKER_URL move them, e.g. so two benchmark runs on one machine stay apart.
_DB = os.environ.get("BENCH_DATABASE", "shop_bench")
BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.base",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{_DB}",
    "ORDER_SHARD_URLS": (
        f"postgres://postgres@127.0.0.1:5432/{_DB}_orders_0,"
        f"postgres://postgres@127.0.0.1:5432/{_DB}_orders_1"
    ),
    "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "LOG_LEVEL": "WARNING",
}


PROFILE_DIR = os.environ.get("BENCH_PROFILE", "")
PROFILE_TAG = os.environ.get("BENCH_PROFILE_TAG", "")
PROFILE_ONLY = os.environ.get("BENCH_PROFILE_ONLY", "")
PROFILE_NAMES: dict[str, str] = json.loads(os.environ.get("BENCH_PROFILE_NAMES") or "{}")
PROFILE_RATE = int(os.environ.get("BENCH_PROFILE_RATE", "200"))
PROFILE_IDLE = os.environ.get("BENCH_PROFILE_IDLE", "1") != "0"  # 0: on-CPU samples only
_profiled_workers: list[list[int]] = []  # the worker pids of each shop gunicorn now serving


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


def shell_json(module: str, function: str, *args: object, env: dict[str, str]) -> Any:
    """Call a shop-side function of a bench module (arguments by ``repr``) in ``manage.py
    shell`` on ``env``; returns the JSON of the last line it printed."""
    call = f"from {module} import {function}; {function}({', '.join(map(repr, args))})"
    return json.loads(manage("shell", "-c", call, env=env).strip().splitlines()[-1])


def manage_parallel(commands: list[list[str]], *, env: dict[str, str]) -> list[str]:
    """Run several ``manage.py`` commands at once; their stdouts, in order. Fails if any
    fails (after all have finished)."""
    pipe = subprocess.PIPE
    processes = [
        subprocess.Popen(
            [PYTHON, "manage.py", *args], cwd=ROOT, env=env, text=True, stdout=pipe, stderr=pipe
        )
        for args in commands
    ]
    outputs = [process.communicate() for process in processes]
    for args, process, (_, stderr) in zip(commands, processes, outputs, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"manage.py {' '.join(args)[:200]} failed:\n{stderr}")
    return [stdout for stdout, _ in outputs]


def audit(env: dict[str, str]) -> bool:
    """Run ``manage.py audit_invariants``; print its violations (the first 20) and verdict."""
    result = subprocess.run(
        [PYTHON, "manage.py", "audit_invariants"], cwd=ROOT, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    violations = [line for line in lines if line.startswith("VIOLATION")]
    for line in violations[:20]:
        print(f"  {line}")
    if len(violations) > 20:
        print(f"  ... and {len(violations) - 20} more violations")
    verdict = lines[-1] if lines else result.stderr.strip()[-500:]
    print(f"audit_invariants: {verdict} (exit {result.returncode})")
    return result.returncode == 0


# --- Shop-side helpers: only for code running inside `manage.py shell` ----------------------


def shop_buyers(users: int, *, create_missing: bool = False) -> list[dict]:
    """The buyers ``buyer``, ``buyer2`` … ``buyer<users>`` (by id), each with an API token, its
    shard alias and its logical shard. Missing ones are an error (seed_demo makes them), or,
    with ``create_missing``, created in bulk with the password PASSWORD; missing tokens are
    created in bulk either way."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from rest_framework.authtoken.models import Token

    from shop.sharding import logical_shard_for_user, shard_for_user

    user_model = get_user_model()
    names = {("buyer" if i == 1 else f"buyer{i}"): i for i in range(1, users + 1)}
    if create_missing:
        have = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
        password = make_password(PASSWORD)
        user_model.objects.bulk_create(
            [
                user_model(username=name, email=f"buyer{i}@example.com", password=password)
                for name, i in names.items()
                if name not in have
            ],
            batch_size=1000,
        )
    found = list(user_model.objects.filter(username__in=names).order_by("id"))
    if len(found) != users:
        raise SystemExit(f"found {len(found)} of {users} buyers")
    tokens = dict(Token.objects.filter(user__in=found).values_list("user_id", "key"))
    missing = [Token(key=Token.generate_key(), user=u) for u in found if u.id not in tokens]
    Token.objects.bulk_create(missing, batch_size=1000)
    tokens.update({token.user_id: token.key for token in missing})
    return [
        {
            "id": user.id,
            "token": tokens[user.id],
            "alias": shard_for_user(user.id),
            "logical": logical_shard_for_user(user.id),
        }
        for user in found
    ]


def shop_stock_at_least(skus: Iterable[Any], *, floor: int, target: int) -> int:
    """Receive stock (through the stock service) for each SKU with fewer than ``floor`` units
    available, up to ``target``; returns how many were topped up."""
    from apps.inventory.models import Stock
    from apps.inventory.services import stock_receive

    skus = list(skus)
    have = dict(
        Stock.objects.filter(sku_id__in=[s.id for s in skus]).values_list("sku_id", "available")
    )
    topped_up = 0
    for sku in skus:
        if have.get(sku.id, 0) < floor:
            stock_receive(sku_id=sku.id, quantity=target - have.get(sku.id, 0))
            topped_up += 1
    return topped_up


def shop_databases() -> dict[str, dict]:
    """psycopg connection parameters of ``default`` and every order shard, by alias."""
    from django.conf import settings

    databases = {}
    for alias in ["default", *settings.ORDER_SHARD_ALIASES]:
        db = settings.DATABASES[alias]
        databases[alias] = {
            "host": db["HOST"], "port": db["PORT"], "user": db["USER"],
            "password": db["PASSWORD"], "dbname": db["NAME"],
        }  # fmt: skip
    return databases


def connect_all(databases: Mapping[str, dict], *, shards_only: bool = False) -> dict:
    """An autocommit psycopg connection to each database of ``shop_databases()``, by alias
    (without ``default`` when ``shards_only``)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    return {
        alias: psycopg.connect(make_conninfo(**params), autocommit=True)
        for alias, params in databases.items()
        if not (shards_only and alias == "default")
    }


def databases_vacuumed(databases: Mapping[str, dict]) -> str:
    """``VACUUM (ANALYZE)`` every bench database before a measurement; returns what it did.

    The bench databases grow by every run's orders and their hot rows are updated thousands of
    times. Where autovacuum is off (it is on this project's development VM), the tables keep
    their dead rows and are never analyzed: the planner then guesses, e.g. scans all 110,000
    held reservations through a partial index to commit one order's stock (5 ms instead of
    0.2 ms). A production database runs autovacuum; a benchmark must not measure its absence."""
    started = time.monotonic()
    for connection in connect_all(databases).values():
        with connection:
            connection.execute("VACUUM (ANALYZE)")
    return f"databases vacuumed and analyzed in {time.monotonic() - started:.1f} s"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def web_model(env: Mapping[str, str]) -> tuple[int, int]:
    """(processes, threads per process) that config/gunicorn.py gives the shop under ``env``
    (WEB_CONCURRENCY, WEB_THREADS and their defaults)."""
    config = runpy.run_path(str(ROOT / "config" / "gunicorn.py"))
    return config["web_model"](env)


def web_model_text(env: Mapping[str, str]) -> str:
    """The worker model of ``web_model(env)`` for a report line."""
    processes, threads = web_model(env)
    return f"gunicorn {processes} processes x {threads} threads (gthread)"


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str],
    *,
    workers: int | None = None,
    threads: int | None = None,
    worker_class: str | None = None,
    log: Path | None = None,
    app: str = "config.wsgi",
) -> Iterator[str]:
    """Serve the shop (or another WSGI ``app``) under gunicorn as production does (with
    config/gunicorn.py: its gthread worker model, ``web_model(env)`` processes and threads
    unless ``workers`` / ``threads`` / ``worker_class`` say otherwise; no access log); yields
    the base URL. Its
    output (the shop's log records too) goes to ``log`` if given, else to this process's."""
    port = free_port()
    default_workers, default_threads = web_model(env)
    with open(log or os.devnull, "w") as out:
        process = subprocess.Popen(
            [
                PYTHON, "-m", "gunicorn", app,
                "--config", str(ROOT / "config" / "gunicorn.py"),
                "--bind", f"127.0.0.1:{port}",
                "--workers", str(workers or default_workers),
                "--threads", str(threads or default_threads),
                *(["--worker-class", worker_class] if worker_class else []),
                "--backlog", "2048",
                "--log-level", "warning",
            ],
            cwd=ROOT,
            env={**env, "WEB_ACCESS_LOG": ""},
            **({"stdout": out, "stderr": subprocess.STDOUT} if log else {}),
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:  # base is http://127.0.0.1:<port>, the server this benchmark just started
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as response:  # nosec B310
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        profiled = PROFILE_DIR and app == "config.wsgi"
        if profiled:
            _profiled_workers.append(_children(process.pid))
        try:
            yield base
        finally:
            if profiled:
                _profiled_workers.pop()
    finally:
        process.terminate()
        process.wait(timeout=20)


def _children(pid: int) -> list[int]:
    """The pids of a process's children (gunicorn's workers), ascending."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


@contextlib.contextmanager
def profiled(name: str) -> Iterator[Path | None]:
    """Record a flame graph of the shop's first gunicorn worker while the block runs, when
    BENCH_PROFILE is set (and BENCH_PROFILE_ONLY or one of BENCH_PROFILE_NAMES, if set,
    matches ``name``); yields the SVG's path, or None when nothing is recorded. py-spy samples
    wall-clock time (``--idle``: waits on PostgreSQL, Redis or the bank count;
    BENCH_PROFILE_IDLE=0: on-CPU samples only) and pauses the worker at each sample, so a
    profiled run is slower than a measured one: profile and measure in separate runs."""
    if not (PROFILE_DIR and _profiled_workers and _profiled_workers[-1]):
        yield None
        return
    stem = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if PROFILE_NAMES:
        stem = next((s for pattern, s in PROFILE_NAMES.items() if re.search(pattern, name)), "")
    if not stem or (PROFILE_ONLY and not re.search(PROFILE_ONLY, name)):
        yield None
        return
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    out = Path(PROFILE_DIR) / f"{stem}{'-' + PROFILE_TAG if PROFILE_TAG else ''}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    worker = _profiled_workers[-1][0]
    process = subprocess.Popen(
        [spy, "record", "--pid", str(worker), "--rate", str(PROFILE_RATE),
         *(["--idle"] if PROFILE_IDLE else []), "--format", "flamegraph", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield out
    finally:
        process.send_signal(signal.SIGINT)  # py-spy stops sampling and writes the SVG
        _, stderr = process.communicate(timeout=60)
        if process.returncode != 0 or not out.exists():
            print(f"  WARNING: py-spy failed on worker {worker}: {stderr.strip()[-500:]}")
        else:
            print(f"  flame graph of worker {worker}: {out}", flush=True)


def minimal_gunicorn(
    env: dict[str, str], *, workers: int | None = None, threads: int | None = None
) -> contextlib.AbstractContextManager[str]:
    """The baseline of every HTTP benchmark: ``bench.minimal_site`` (a minimal Django view,
    Security and Common middleware only) under gunicorn with the shop's worker model and count
    (config/gunicorn.py, unless ``workers`` / ``threads`` say otherwise); yields its base URL,
    whose ``/healthz`` is that view."""
    return gunicorn(
        {**env, "DJANGO_SETTINGS_MODULE": "bench.minimal_site"},
        workers=workers,
        threads=threads,
        app="bench.minimal_site",
    )


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str], *, queues: list[str], log: Path, concurrency: int = 2
) -> Iterator[subprocess.Popen]:
    """A real Celery worker (``celery -A config worker``, as in the Procfile) on ``env``, in a
    process group of its own (its pool stops with it), logging to ``log``; yields once it is
    ready. Without gossip and mingle: it starts faster and talks to no other worker. It logs at
    INFO, as the Procfile's does (its "ready." line is an INFO record)."""
    env = {**env, "LOG_LEVEL": "INFO"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                PYTHON, "-m", "celery", "-A", "config", "worker",
                "--queues", ",".join(queues),
                "--concurrency", str(concurrency),
                "--hostname", f"bench-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle",
                "--loglevel", "INFO",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"the Celery worker did not start:\n{tail}")
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # warm shutdown: running tasks finish
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


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
    name: str,
    url: str,
    seconds: int,
    connections: int,
    script: Path | None = None,
    timeout: float | None = None,
) -> LoadResult:
    scripted = ["-s", str(script)] if script else []
    timed = ["--timeout", f"{timeout}s"] if timeout else []  # wrk's default: 2 s
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *timed, *scripted, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return wrk_parse(name, url, seconds, out)


def wrk_parse(name: str, url: str, seconds: float, out: str) -> LoadResult:
    """A LoadResult from wrk's ``--latency`` output (and a script's "status" lines)."""
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in match.groups())
    # the "Latency Distribution" lines (not a "+/- Stdev" figure such as 93.99%)
    p50 = _ms(re.search(r"^\s*50%\s+(\S+)", out, flags=re.MULTILINE).group(1))
    p99 = _ms(re.search(r"^\s*99%\s+(\S+)", out, flags=re.MULTILINE).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # A script's done() may report answers as "status <label>: <count>" lines (one per thread).
    statuses: Counter[str] = Counter()
    for label, count in re.findall(r"^status (.+): (\d+)$", out, flags=re.MULTILINE):
        statuses[label] += int(count)
    return LoadResult(name, url, requests, errors, seconds, rps, p50, p99, "wrk", dict(statuses))


# The end of a wrk script that counts answers in a global ``statuses`` table (label → count,
# one per thread): prints the "status <label>: <count>" lines the wrk parser above reads.
LUA_STATUS_DONE = """function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for label, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %s: %d\\n", label, count))
    end
  end
end
"""


def status_label(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> str:
    if headers is not None and headers.get("Idempotent-Replayed"):
        return f"{status} replayed"  # a repeated Idempotency-Key: no new effect
    if 200 <= status < 300:
        return str(status)
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    return f"{status} {code}" if code else str(status)


Labeller = Callable[[int, bytes, Mapping[str, str] | None], str]


def _python_load(
    name: str,
    url: str,
    seconds: float,
    connections: int,
    make_request: Callable[[], urllib.request.Request | None] | None = None,
    label: Labeller = status_label,
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
            if request is None:  # a finite list of requests is used up
                break
            started = time.perf_counter()
            try:  # the scenario's requests go to the local server under test (http://127.0.0.1)
                with urllib.request.urlopen(request, timeout=10) as response:  # nosec B310
                    answer = label(response.status, response.read(), response.headers)
                    ok = 200 <= response.status < 400
            except urllib.error.HTTPError as exc:
                answer, ok = label(exc.code, exc.read(), None), False
            except OSError as exc:
                answer, ok = f"socket {type(exc).__name__}", False
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                errors += not ok
                statuses[answer] += 1

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


def load_mean(name: str, *runs: LoadResult) -> LoadResult:
    """The mean of several runs of one load (e.g. a baseline measured before and after the
    scenario it is compared with, so the machine's drift between them evens out)."""
    n = len(runs)
    return LoadResult(
        name=name,
        url=runs[0].url,
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        seconds=sum(r.seconds for r in runs),
        rps=sum(r.rps for r in runs) / n,
        p50_ms=sum(r.p50_ms for r in runs) / n,
        p99_ms=sum(r.p99_ms for r in runs) / n,
        tool=runs[0].tool,
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
    warmup_script: Path | None = None,
    make_request: Callable[[], urllib.request.Request] | None = None,
    label: Labeller = status_label,
    timeout: float | None = None,
) -> LoadResult:
    """Drive ``url`` for ``seconds`` after a short warm-up; wrk if installed.

    For requests other than a plain GET give both ``script`` (a wrk Lua script) and
    ``make_request`` (what the Python fallback sends instead, one new request per call).
    ``warmup_script`` replaces ``script`` during the warm-up (e.g. to consume other
    one-shot resources than the timed run); ``label(status, body, headers)`` names the
    fallback's answers (the Lua script's ``response()`` does that under wrk). ``timeout``
    (seconds): an answer slower than this counts as a socket error and is left out of the
    latencies (wrk's default 2 s; the Python fallback waits 10 s).
    """
    if shutil.which("wrk"):
        # warm-up: connections, caches, lazy imports
        _wrk(name, url, WARMUP_SECONDS, connections, warmup_script or script, timeout)
        with profiled(name):
            return _wrk(name, url, seconds, connections, script, timeout)
    if script is not None and make_request is None:
        raise SystemExit(f"{name}: wrk is not installed and no Python fallback was given")
    _python_load(name, url, WARMUP_SECONDS, connections, make_request, label)
    with profiled(name):
        return _python_load(name, url, seconds, connections, make_request, label)


# A wrk script sending a finite list prints this line (and flushes) once its last answer is in.
LIST_DONE = "bench: list done"


def run_list(
    name: str,
    url: str,
    *,
    script: Path,
    make_request: Callable[[], urllib.request.Request | None],
    label: Labeller = status_label,
    connections: int = 8,
    limit: int = 600,
) -> tuple[LoadResult, str]:
    """Send a finite list of requests, each once, without a warm-up (e.g. a sale, which happens
    once); returns the result and wrk's output ("" from the Python fallback).

    Under wrk, ``script`` walks the list and prints LIST_DONE when it is through; wrk is then
    interrupted, so its run time and rate are the list's (and answers up to 30 s are timed,
    not dropped). The Python fallback sends what ``make_request`` returns until it returns
    None. Either gives up after ``limit`` seconds.
    """
    if not shutil.which("wrk"):
        with profiled(name):
            return _python_load(name, url, limit, connections, make_request, label), ""
    began = time.monotonic()
    with profiled(name):
        process = subprocess.Popen(
            ["wrk", "-t1", f"-c{connections}", f"-d{limit}s", "--timeout", "30s", "--latency",
             "-s", str(script), url],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.strip() == LIST_DONE:
                process.send_signal(signal.SIGINT)  # wrk prints its summary and exits
    if process.wait() != 0:
        raise SystemExit(f"{name}: wrk failed (exit {process.returncode}):\n{''.join(lines)}")
    out = "".join(lines)
    return wrk_parse(name, url, time.monotonic() - began, out), out


def threaded_load(
    name: str,
    target: str,
    make_worker: Callable[[int], tuple[Callable[[], str], Callable[[], None]]],
    *,
    seconds: float,
    connections: int,
    tool: str = "psycopg",
    warmup: float = WARMUP_SECONDS,
) -> LoadResult:
    """A baseline load without HTTP: ``connections`` threads, each repeating one unit of work
    as fast as it can for ``seconds`` (after ``warmup`` unmeasured seconds).

    ``make_worker(index)`` runs in its thread and returns ``(step, close)``: ``step()`` does one
    unit (it is what is timed) and returns its label, ``"ok"`` for success (anything else counts
    as an error); ``close()`` runs when the thread is done (e.g. closes its connections)."""
    latencies: list[list[float]] = [[] for _ in range(connections)]
    labels: list[Counter[str]] = [Counter() for _ in range(connections)]
    failures: list[BaseException] = []
    window: dict[str, float] = {}

    def begin() -> None:  # once every worker is connected, before any is released
        window["began"] = time.monotonic()
        window["stop"] = window["began"] + warmup + seconds

    start = threading.Barrier(connections, action=begin)

    def worker(index: int) -> None:
        try:
            step, close = make_worker(index)
        except BaseException as exc:
            failures.append(exc)
            start.abort()
            raise
        try:
            start.wait()
            warm_until = window["began"] + warmup
            while time.monotonic() < warm_until:
                step()
            mine, seen = latencies[index], labels[index]
            while time.monotonic() < window["stop"]:
                started = time.perf_counter()
                label = step()
                mine.append((time.perf_counter() - started) * 1000)
                seen[label] += 1
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{name}: a worker failed: {failures[0]!r}")
    took = time.monotonic() - window["began"] - warmup
    ordered = sorted(ms for mine in latencies for ms in mine)
    statuses = sum(labels, Counter())
    return LoadResult(
        name=name,
        url=target,
        requests=len(ordered),
        errors=len(ordered) - statuses["ok"],
        seconds=took,
        rps=len(ordered) / took,
        p50_ms=statistics.median(ordered) if ordered else float("nan"),
        p99_ms=percentile(ordered, 0.99),
        tool=tool,
        statuses=dict(statuses),
    )


def lua_list(values: list[str]) -> str:
    """A Lua list literal of plain ASCII strings (refuses anything that would need escaping)."""
    for value in values:
        if not value.isascii() or not value.isprintable() or '"' in value or "\\" in value:
            raise ValueError(f"cannot embed {value!r} in the wrk script")
    return "{" + ", ".join(f'"{value}"' for value in values) + "}"


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


# --- The one summary table (bench/all.py) ------------------------------------------------------


def summary_row(
    scenario: str,
    result: LoadResult | Mapping[str, Any],
    *,
    baseline: str,
    baseline_rps: float | None,
    target: float | None,
    note: str = "",
) -> dict[str, Any]:
    """One row of the summary table: a scenario's rate, latencies and errors (a LoadResult, or a
    mapping with ``rps`` and optionally ``p50_ms``, ``p99_ms``, ``errors``, ``requests``), its
    ratio to ``baseline`` (measured in the same run at ``baseline_rps``) and whether it meets
    ``target`` (a minimum ratio; None when the baseline is not the one the target is set
    against: ``met`` is then "n/a")."""
    values = asdict(result) if isinstance(result, LoadResult) else dict(result)
    rps = values["rps"]
    ratio = rps / baseline_rps if baseline_rps else None
    met = "n/a" if target is None or ratio is None else "yes" if ratio >= target else "no"
    return {
        "scenario": scenario,
        "rps": rps,
        "p50_ms": values.get("p50_ms"),
        "p99_ms": values.get("p99_ms"),
        "errors": values.get("errors"),
        "requests": values.get("requests"),
        "baseline": baseline,
        "baseline_rps": baseline_rps,
        "ratio": ratio,
        "target": target,
        "met": met,
        "note": note,
        "script": Path(sys.argv[0]).name,
    }


def summary_rows(rows: list[dict[str, Any]]) -> None:
    """Append a script's summary rows (``summary_row``) to the file BENCH_SUMMARY names, one
    JSON object a line; without BENCH_SUMMARY, do nothing (the script ran on its own)."""
    path = os.environ.get("BENCH_SUMMARY")
    if not path:
        return
    with open(path, "a") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
