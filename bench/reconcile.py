"""Reconciliation benchmark (issue: reconciliation).

Reconciles a synthetic business day of N settlement rows against N card payments spread over
every logical shard (so over both physical order databases), for N = 100,000 and 1,000,000 in
the same run: rows/s and the peak memory (RSS) of the ``manage.py reconcile`` process. The
target is a peak RSS independent of N (the ratio 1M / 100k close to 1.0).

    python bench/reconcile.py [--sizes 100000,1000000] [--keep] [--no-phases]

Per size N (the i-th size gets its own past business day, 2025-01-01 + i, so sizes never mix
and no real shop data -- all of it newer than the id epoch -- is touched):

1. Synthetic data, written with PostgreSQL COPY straight into ``orders_order`` and
   ``payments_payment`` of each physical shard (load data, not the system under test): N paid
   orders and N succeeded card payments at channel ``alpha`` (order total = amount =
   captured_amount, EUR), evenly over the 64 logical shards, ``settled_at`` spread over the
   day. Payment and order ids are composed (``id_compose``) in a one-minute window right after
   the id epoch reserved for that day, and the buyers are synthetic user ids
   (``SYNTHETIC_USER_BASE + logical``), so the rows are found again exactly for deletion.
2. The bank's settlement CSV for the day (a temp file): one ``capture`` row per payment in
   RANDOM order (seeded shuffle: the engine must not rely on the file being sorted), with
   ``ANOMALIES`` deliberate differences of each kind: amounts changed by one cent
   (AMOUNT_MISMATCH), rows left out (SYSTEM_ONLY) and rows for payment ids we do not have
   (BANK_ONLY: plausible ids in the day's window that no payment carries). The file still has
   N rows. The outcome counts printed by the command must equal these.
3. ``manage.py reconcile --date DAY --channel alpha --file CSV`` in a separate process (the
   real command: import with COPY, then the streamed merge join), whose peak RSS is the
   kernel's ``ru_maxrss`` of that process alone (``os.wait4`` in a bare-interpreter wrapper:
   spawned from this process directly, the child's ru_maxrss would include this process's own
   high-water mark, see ``_WRAPPER``) and whose RSS is also sampled every 100 ms from /proc
   to show its course over the run. rows/s = (bank rows + our payments) / wall time of the
   whole command (Python and Django start-up included).
4. Phases (unless ``--no-phases``): the same work again, instrumented, in a ``manage.py
   shell`` process: ``settlement_import`` of the SAME file (it parses and COPYs every row, then
   finds the content already imported -- same SHA-256 -- and rolls its rows back, so this is
   the full import cost), then ``reconcile_day`` against the first import (the match: both
   streams, the merge, the 3 x ANOMALIES discrepancies, already recorded, so "0 new"). Time
   and peak RSS (VmHWM, reset between phases through /proc/self/clear_refs) per phase.

For the SYSTEM_ONLY rows the shop asks the bank about the payment (``ChannelClient.status``):
the command is pointed (ACQUIRER_URL) at a stub acquirer in this process that answers
"captured" ("the bank confirms the capture but its file omits it": escalated, no ledger
change). Those calls record successes in alpha's breaker and health window (Redis db 14).

Clean-up: the synthetic orders and payments would fail ``audit_invariants`` (no reservations,
no ledger captures), so this scenario does not run the audit; instead it deletes everything of
its days -- the synthetic orders and payments on the shards, and the day's settlement files and
rows, runs, discrepancies and review items on ``default`` -- at the start (a crashed earlier
run) and again at the end (unless ``--keep``), then VACUUMs those tables. Disk: about 0.5 GB
while the 1M day exists.

Needs the local PostgreSQL and Redis of the services profile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, ROOT, bench_env, free_port, manage, save
from shop.sharding.ids import ID_EPOCH_MS, SEQUENCE_BITS, SHARD_BITS, id_compose, id_logical_shard

CHANNEL = "alpha"
FIRST_DAY = date(2025, 1, 1)  # the i-th size reconciles FIRST_DAY + i days
WINDOW_MS = 60_000  # each synthetic day's ids: one minute of id time after the epoch
SYNTHETIC_USER_BASE = 9_000_000_000  # buyer of logical shard l: SYNTHETIC_USER_BASE + l
ANOMALIES = 10  # of each kind: amount changed, row missing, row extra
SEED = 20250101
COPY_BLOCK = 20_000  # rows per COPY write
SAMPLE_SECONDS = 0.1
SEQUENCE_SPAN = 1 << SEQUENCE_BITS
CSV_HEADER = "channel_transaction_id,payment_id,type,amount,currency,status,settled_at,fee\n"
SUMMARY = re.compile(
    r"ours (?P<ours>\d+) \((?P<ours_total>\d+)\), bank (?P<bank>\d+) \((?P<bank_total>\d+)\), "
    r"matched (?P<matched>\d+); discrepancies: (?P<issues>[^;]*); (?P<new>\d+) new"
)


# --- Shop side: these run inside `manage.py shell` on the bench env --------------------------


def _vm(field_name: str) -> int:
    """A VmXXX figure of this process from /proc/self/status, in KiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field_name}:\s+(\d+) kB", status, flags=re.MULTILINE).group(1))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def shell_prepare() -> None:
    """The sandbox channels (alpha among them), the shard map and the databases; prints JSON."""
    from django.conf import settings

    from apps.payments.services.channels import channels_ensure_sandbox
    from bench.common import shop_databases

    channels_ensure_sandbox()
    print(
        json.dumps(
            {
                "map": {str(k): v for k, v in settings.ORDER_SHARD_MAP.items()},
                "logical": settings.LOGICAL_SHARD_COUNT,
                "time_zone": settings.TIME_ZONE,
                "databases": shop_databases(),
            }
        )
    )


def shell_phases(day_text: str, channel: str, path: str) -> None:
    """Import ``path`` then reconcile the day, timing each phase and its peak RSS; prints
    JSON."""
    from apps.reconciliation.models import SettlementFile
    from apps.reconciliation.services import reconcile_day, settlement_import

    day = date.fromisoformat(day_text)
    result: dict[str, object] = {"startup_peak_kib": _vm("VmHWM"), "startup_kib": _vm("VmRSS")}
    result["peak_reset"] = _reset_peak()
    started = time.perf_counter()
    with open(path, encoding="utf-8", newline="") as lines:
        settlement = settlement_import(
            channel=channel, business_day=day, lines=lines, source=SettlementFile.Source.FILE,
            actor="bench/reconcile.py",
        )  # fmt: skip
    result["import_seconds"] = time.perf_counter() - started
    result["import_peak_kib"] = _vm("VmHWM")
    result["after_import_kib"] = _vm("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    run = reconcile_day(channel=channel, business_day=day, settlement=settlement).run
    result["match_seconds"] = time.perf_counter() - started
    result["match_peak_kib"] = _vm("VmHWM")
    result["after_match_kib"] = _vm("VmRSS")
    result.update(
        file_rows=settlement.row_count, ours=run.ours_count, bank=run.bank_count,
        matched=run.matched_count, discrepancies=run.discrepancies,
    )  # fmt: skip
    print(json.dumps(result))


# --- The synthetic day ------------------------------------------------------------------------


@dataclass
class Shop:
    shard_map: dict[int, str]  # logical -> alias
    logical: int
    zone: ZoneInfo
    databases: dict[str, dict]

    def conninfo(self, alias: str) -> str:
        params = {k: v for k, v in self.databases[alias].items() if v not in ("", None)}
        return psycopg.conninfo.make_conninfo(**params)

    @property
    def shard_aliases(self) -> list[str]:
        return sorted(set(self.shard_map.values()))


@dataclass(frozen=True)
class Day:
    size: int
    day: date
    index: int  # FIRST_DAY + index
    logical: int

    @property
    def ms_base(self) -> int:
        return ID_EPOCH_MS + self.index * WINDOW_MS

    @property
    def id_range(self) -> tuple[int, int]:
        """[lo, hi) of every id this day's synthetic rows may carry."""
        return (
            id_compose(ms=self.ms_base, logical=0, sequence=0),
            id_compose(ms=self.ms_base + WINDOW_MS, logical=0, sequence=0),
        )

    def count(self, logical: int) -> int:
        return self.size // self.logical + (logical < self.size % self.logical)

    def payment_id(self, logical: int, j: int) -> int:
        return id_compose(
            ms=self.ms_base + j // SEQUENCE_SPAN, logical=logical, sequence=j % SEQUENCE_SPAN
        )

    def payments(self, logical: int) -> Iterator[tuple[int, int]]:
        """(payment id, position in the day 0..N-1) of one logical shard's payments."""
        for j in range(self.count(logical)):
            yield self.payment_id(logical, j), j * self.logical + logical

    def position(self, payment_id: int) -> int:
        """The position in the day (0..N-1) of one of this day's payments, from its id."""
        logical = id_logical_shard(payment_id)
        ms = (payment_id >> (SEQUENCE_BITS + SHARD_BITS)) + ID_EPOCH_MS
        j = (ms - self.ms_base) * SEQUENCE_SPAN + (payment_id & (SEQUENCE_SPAN - 1))
        return j * self.logical + logical

    def all_ids(self) -> list[int]:
        return [pid for logical in range(self.logical) for pid, _ in self.payments(logical)]


def amount_of(payment_id: int) -> int:
    return 100 + payment_id % 99_901  # 1.00 .. 1,000.00 EUR, fixed by the id


def settled_at(day: Day, start: datetime, position: int) -> datetime:
    return start + timedelta(microseconds=position * (86_400_000_000 // day.size))


def clean_day(shop: Shop, day: Day) -> dict[str, int]:
    """Delete everything of a synthetic day; how many rows, by table."""
    lo, hi = day.id_range
    user_lo, user_hi = SYNTHETIC_USER_BASE, SYNTHETIC_USER_BASE + day.logical
    deleted: dict[str, int] = {}
    for alias in shop.shard_aliases:
        with psycopg.connect(shop.conninfo(alias)) as conn:
            for table in ("payments_payment", "orders_order"):  # payments reference orders
                cursor = conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE id >= %s AND id < %s"
                        " AND user_id >= %s AND user_id < %s"
                    ).format(sql.Identifier(table)),
                    [lo, hi, user_lo, user_hi],
                )
                deleted[f"{alias}.{table}"] = cursor.rowcount
    reference = f"{CHANNEL}:{day.day.isoformat()}:%"
    this_day = sql.SQL("channel = %s AND business_day = %s")
    files = sql.SQL("SELECT id FROM reconciliation_settlementfile WHERE {}").format(this_day)
    with psycopg.connect(shop.conninfo("default")) as conn:
        for table, statement, params in [
            ("shop_manualreviewitem",
             sql.SQL("DELETE FROM shop_manualreviewitem"
                     " WHERE kind = 'reconciliation' AND reference LIKE %s"),
             [reference]),
            ("reconciliation_discrepancy",
             sql.SQL("DELETE FROM reconciliation_discrepancy WHERE {}").format(this_day),
             [CHANNEL, day.day]),
            ("reconciliation_reconciliationrun",
             sql.SQL("DELETE FROM reconciliation_reconciliationrun WHERE {}").format(this_day),
             [CHANNEL, day.day]),
            ("reconciliation_settlementrow",
             sql.SQL("DELETE FROM reconciliation_settlementrow WHERE file_id IN ({})")
             .format(files),
             [CHANNEL, day.day]),
            ("reconciliation_settlementfile",
             sql.SQL("DELETE FROM reconciliation_settlementfile WHERE {}").format(this_day),
             [CHANNEL, day.day]),
        ]:  # fmt: skip
            deleted[f"default.{table}"] = conn.execute(statement, params).rowcount
    return deleted


def vacuum(shop: Shop) -> None:
    tables = {alias: ["payments_payment", "orders_order"] for alias in shop.shard_aliases} | {
        "default": ["reconciliation_settlementrow", "reconciliation_settlementfile"]
    }
    for alias, names in tables.items():
        with psycopg.connect(shop.conninfo(alias), autocommit=True) as conn:
            for name in names:
                conn.execute(f"VACUUM (ANALYZE) {name}")


def load_day(shop: Shop, day: Day) -> dict[str, int]:
    """COPY the day's orders and payments onto their physical shards; rows per alias."""
    start = datetime.combine(day.day, clock.min, tzinfo=shop.zone)
    per_alias: dict[str, int] = {}
    for alias in shop.shard_aliases:
        logicals = [lg for lg in range(day.logical) if shop.shard_map[lg] == alias]
        with psycopg.connect(shop.conninfo(alias)) as conn, conn.cursor() as cursor:
            for table, columns, line in [
                ("orders_order",
                 "id, user_id, status, currency, total, expires_at, created_at, updated_at,"
                 " paid_at, payment_started_at",
                 "{id}\t{user}\tpaid\tEUR\t{amount}\t{at}\t{at}\t{at}\t{at}\t\\N\n"),
                ("payments_payment",
                 "id, order_id, user_id, method, channel, amount, currency, status,"
                 " captured_amount, refunded_amount, failure_code, failure_detail, created_at,"
                 " updated_at, settled_at",
                 "{id}\t{id}\t{user}\tcard\t" + CHANNEL
                 + "\t{amount}\tEUR\tsucceeded\t{amount}\t0\t\t\t{at}\t{at}\t{at}\n"),
            ]:  # fmt: skip
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    block: list[str] = []
                    for logical in logicals:
                        user = SYNTHETIC_USER_BASE + logical
                        for payment_id, position in day.payments(logical):
                            at = settled_at(day, start, position).isoformat(sep=" ")
                            block.append(
                                line.format(
                                    id=payment_id, user=user, amount=amount_of(payment_id), at=at
                                )
                            )
                            if len(block) >= COPY_BLOCK:
                                copy.write("".join(block))
                                block = []
                    copy.write("".join(block))
            per_alias[alias] = sum(day.count(lg) for lg in logicals)
        with psycopg.connect(shop.conninfo(alias), autocommit=True) as conn:
            conn.execute("ANALYZE payments_payment")
            conn.execute("ANALYZE orders_order")
    return per_alias


@dataclass
class Anomalies:
    amount_changed: list[int]
    missing: list[int]
    extra: list[int]


def write_settlement(shop: Shop, day: Day, path: Path) -> Anomalies:
    """The bank's CSV for the day: every payment's capture (shuffled) with the anomalies."""
    rng = random.Random(SEED + day.index)
    ids = day.all_ids()
    chosen = rng.sample(ids, 2 * ANOMALIES)
    anomalies = Anomalies(
        amount_changed=sorted(chosen[:ANOMALIES]),
        missing=sorted(chosen[ANOMALIES:]),
        # plausible ids of this day that no payment carries (past each shard's last sequence)
        extra=[day.payment_id(k % day.logical, day.count(k % day.logical) + k)
               for k in range(ANOMALIES)],
    )  # fmt: skip
    missing, changed = set(anomalies.missing), set(anomalies.amount_changed)
    ids = [pid for pid in ids if pid not in missing] + anomalies.extra
    rng.shuffle(ids)
    start = datetime.combine(day.day, clock.min, tzinfo=shop.zone)
    extra = set(anomalies.extra)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(CSV_HEADER)
        block: list[str] = []
        for pid in ids:
            position = 0 if pid in extra else day.position(pid)
            amount = amount_of(pid) + (pid in changed)
            at = settled_at(day, start, position).isoformat()
            block.append(f"T{pid},{pid},capture,{amount},EUR,settled,{at},{amount // 100}\n")
            if len(block) >= COPY_BLOCK:
                out.write("".join(block))
                block = []
        out.write("".join(block))
    return anomalies


# --- The stub acquirer -----------------------------------------------------------------------


class _Acquirer(BaseHTTPRequestHandler):
    calls = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        match = re.fullmatch(r"/channels/[\w-]+/payments/(\d+)", self.path)
        with _Acquirer.lock:
            _Acquirer.calls += 1
        body = json.dumps({"status": "captured", "payment_id": match.group(1)} if match else {})
        self.send_response(200 if match else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def stub_acquirer() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Acquirer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- Measuring a child process ----------------------------------------------------------------


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_kib: int  # ru_maxrss of the command alone (os.wait4 in the wrapper)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, RSS KiB)
    sampled_hwm_kib: int = 0  # the last VmHWM read from /proc while it ran (a cross-check)

    def rss_at(self, fraction: float) -> int:
        """The sampled RSS at ``fraction`` of the run (KiB)."""
        if not self.samples:
            return 0
        target = self.seconds * fraction
        return min(self.samples, key=lambda s: abs(s[0] - target))[1]


# Runs the measured command and reports its own rusage. Needed because a child spawned from
# this process inherits our high-water RSS: with vfork + exec the kernel folds the parent's
# peak RSS into the child's ru_maxrss (exec_mmap -> setmax_mm_hiwater_rss), and this process
# peaks above 100 MiB while writing the 1M-row file. The wrapper is a bare interpreter (~10 MiB),
# far below any Django process, so the child's ru_maxrss is its own peak.
_WRAPPER = """
import json, os, subprocess, sys, time
report = sys.argv[1]
started = time.monotonic()
child = subprocess.Popen(sys.argv[2:])
with open(report + ".pid", "w") as out:
    out.write(str(child.pid))
_, status, usage = os.wait4(child.pid, 0)
child.returncode = code = os.waitstatus_to_exitcode(status)
with open(report, "w") as out:
    json.dump({"exit": code, "maxrss_kib": usage.ru_maxrss,
               "seconds": time.monotonic() - started}, out)
sys.exit(0 if code == 0 else 1)
"""


def _proc_kib(status: Path, name: str) -> int | None:
    try:
        text = status.read_text()
    except OSError:
        return None
    match = re.search(rf"^{name}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def run_measured(argv: list[str], env: dict[str, str]) -> Measured:
    """Run ``argv`` (from ROOT) through the rusage wrapper: wall time, its own peak RSS
    (``ru_maxrss`` from ``os.wait4``) and its RSS every SAMPLE_SECONDS."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp,
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
    ):
        report = Path(tmp) / "rusage.json"
        pid_file = Path(f"{report}.pid")
        wrapper = subprocess.Popen(
            [PYTHON, "-c", _WRAPPER, str(report), *argv], cwd=ROOT, env=env, stdout=out,
            stderr=err, text=True,
        )  # fmt: skip
        samples: list[tuple[float, int]] = []
        last_hwm: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not pid_file.exists() or not pid_file.read_text():
                if done.wait(0.005):
                    return
            began = time.monotonic()
            status = Path(f"/proc/{pid_file.read_text()}/status")
            while not done.is_set():
                rss, hwm = _proc_kib(status, "VmRSS"), _proc_kib(status, "VmHWM")
                if rss is not None:
                    samples.append((time.monotonic() - began, rss))
                if hwm is not None:
                    last_hwm[:] = [hwm]
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wrapper.wait()
        done.set()
        sampler.join()
        if not report.exists():
            err.seek(0)
            raise SystemExit(f"the measuring wrapper failed:\n{err.read()}")
        usage = json.loads(report.read_text())
        out.seek(0)
        err.seek(0)
        return Measured(
            usage["exit"], out.read(), err.read(), usage["seconds"], usage["maxrss_kib"],
            samples, last_hwm[0] if last_hwm else 0,
        )  # fmt: skip


def mib(kib: float) -> float:
    return kib / 1024


# --- The scenario -----------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    day: str
    bank_rows: int
    our_payments: int
    load_seconds: float
    csv_seconds: float
    csv_mib: float
    command: str
    summary: str
    seconds: float
    rows_per_second: float  # (bank rows + our payments) / wall time of the command
    peak_rss_mib: float
    rss_course_mib: dict[str, float]
    sampled_hwm_mib: float
    expected_ok: bool
    acquirer_calls: int
    phases: dict | None = None


def expected_check(summary: str, day: Day) -> tuple[bool, str]:
    match = SUMMARY.search(summary)
    if not match:
        return False, "the summary line was not recognised"
    issues = dict(
        (name, int(count))
        for name, count in (item.rsplit(" ", 1) for item in match.group("issues").split(", "))
        if name != "none"
    )
    want = {"AMOUNT_MISMATCH": ANOMALIES, "BANK_ONLY": ANOMALIES, "SYSTEM_ONLY": ANOMALIES}
    got = {
        "ours": int(match.group("ours")),
        "bank": int(match.group("bank")),
        "matched": int(match.group("matched")),
    }
    expect = {"ours": day.size, "bank": day.size, "matched": day.size - 2 * ANOMALIES}
    ok = issues == want and got == expect
    return ok, f"expected ours/bank/matched {expect} and {want}; got {got} and {issues}"


def bench_size(
    shop: Shop, day: Day, env: dict[str, str], workdir: Path, *, phases: bool
) -> SizeResult:
    print(f"\n== {day.size:,} payments / settlement rows, business day {day.day} ==", flush=True)
    deleted = clean_day(shop, day)
    if any(deleted.values()):
        print(f"  cleaned earlier synthetic data: {sum(deleted.values()):,} rows", flush=True)
        vacuum(shop)
    started = time.monotonic()
    per_alias = load_day(shop, day)
    load_seconds = time.monotonic() - started
    print(
        f"  loaded {day.size:,} paid orders + {day.size:,} succeeded card payments ({CHANNEL}) "
        f"over {day.logical} logical shards by COPY in {load_seconds:.1f} s: "
        + ", ".join(f"{alias} {count:,}" for alias, count in per_alias.items()),
        flush=True,
    )
    path = workdir / f"settlement-{CHANNEL}-{day.day}.csv"
    started = time.monotonic()
    write_settlement(shop, day, path)
    csv_seconds = time.monotonic() - started
    csv_mib = path.stat().st_size / 2**20
    print(
        f"  settlement CSV: {day.size:,} capture rows, shuffled ({csv_mib:.0f} MiB, "
        f"{csv_seconds:.1f} s): {ANOMALIES} amounts changed, {ANOMALIES} of ours missing, "
        f"{ANOMALIES} not ours",
        flush=True,
    )

    argv = [PYTHON, "manage.py", "reconcile", "--date", day.day.isoformat(), "--channel",
            CHANNEL, "--file", str(path)]  # fmt: skip
    command = shlex.join([".venv/bin/python", *argv[1:]])
    print(f"  $ {command}", flush=True)
    calls_before = _Acquirer.calls
    measured = run_measured(argv, env)
    if measured.returncode != 0:
        raise SystemExit(f"reconcile failed ({measured.returncode}):\n{measured.stderr}")
    summary = measured.stdout.strip().splitlines()[-1]
    print(f"  {summary}")
    ok, detail = expected_check(summary, day)
    rows = 2 * day.size
    course = {
        f"{int(f * 100)}%": round(mib(measured.rss_at(f)), 1) for f in (0.1, 0.25, 0.5, 0.75, 0.95)
    }
    print(
        f"  wall {measured.seconds:.1f} s, {rows / measured.seconds:,.0f} rows/s (bank rows + our "
        f"payments = {rows:,} / wall), peak RSS {mib(measured.peak_kib):.1f} MiB (VmHWM last "
        f"sampled {mib(measured.sampled_hwm_kib):.1f}); RSS over the run (MiB): "
        + ", ".join(f"{k} {v}" for k, v in course.items()),
        flush=True,
    )
    print(
        f"  outcome counts {'OK' if ok else 'WRONG'}: {detail}; the bank (stub) was asked about "
        f"{_Acquirer.calls - calls_before} payments",
        flush=True,
    )
    result = SizeResult(
        size=day.size, day=day.day.isoformat(), bank_rows=day.size, our_payments=day.size,
        load_seconds=load_seconds, csv_seconds=csv_seconds, csv_mib=csv_mib, command=command,
        summary=summary, seconds=measured.seconds, rows_per_second=rows / measured.seconds,
        peak_rss_mib=mib(measured.peak_kib), rss_course_mib=course,
        sampled_hwm_mib=mib(measured.sampled_hwm_kib), expected_ok=ok,
        acquirer_calls=_Acquirer.calls - calls_before,
    )  # fmt: skip
    if phases:
        arguments = f"{day.day.isoformat()!r}, {CHANNEL!r}, {str(path)!r}"
        call = f"from bench.reconcile import shell_phases; shell_phases({arguments})"
        phased = run_measured([PYTHON, "manage.py", "shell", "-c", call], env)
        if phased.returncode != 0:
            raise SystemExit(f"phases failed ({phased.returncode}):\n{phased.stderr}")
        data = json.loads(phased.stdout.strip().splitlines()[-1])
        data["process_peak_kib"] = phased.peak_kib
        data["seconds"] = phased.seconds
        result.phases = data
        print(
            f"  phases (2nd process, same file; manage.py shell): start-up "
            f"{mib(data['startup_kib']):.1f} MiB; import {data['import_seconds']:.1f} s "
            f"({day.size / data['import_seconds']:,.0f} bank rows/s, parse + COPY, then rolled "
            f"back as a duplicate) peak {mib(data['import_peak_kib']):.1f} MiB; match "
            f"{data['match_seconds']:.1f} s ({rows / data['match_seconds']:,.0f} rows/s, bank rows "
            f"+ our payments) peak {mib(data['match_peak_kib']):.1f} MiB"
            + ("" if data["peak_reset"] else " (peak not resettable: cumulative)"),
            flush=True,
        )
    result.acquirer_calls = _Acquirer.calls - calls_before
    path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated row counts")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic days at the end")
    parser.add_argument("--no-phases", action="store_true", help="skip the instrumented re-run")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1000:
        raise SystemExit("--sizes: each size must be at least 1000")

    began = time.monotonic()
    env = bench_env()
    print("preparing: migrate, sandbox channels ...", flush=True)
    manage("migrate_all", env=env)
    prepared = json.loads(
        manage("shell", "-c", "from bench.reconcile import shell_prepare; shell_prepare()",
               env=env).strip().splitlines()[-1]
    )  # fmt: skip
    shop = Shop(
        shard_map={int(k): v for k, v in prepared["map"].items()},
        logical=prepared["logical"],
        zone=ZoneInfo(prepared["time_zone"]),
        databases=prepared["databases"],
    )
    days = [
        Day(size, FIRST_DAY + timedelta(days=i), i, shop.logical) for i, size in enumerate(sizes)
    ]
    results: list[SizeResult] = []
    with stub_acquirer() as acquirer, tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        env = bench_env(ACQUIRER_URL=acquirer)
        print(f"  {CHANNEL}'s bank status answers come from a stub acquirer at {acquirer}")
        try:
            for day in days:
                results.append(bench_size(shop, day, env, Path(tmp), phases=not args.no_phases))
        finally:
            if not args.keep:
                removed = sum(sum(clean_day(shop, day).values()) for day in days)
                vacuum(shop)
                print(f"\ncleaned up: {removed:,} synthetic rows deleted (orders, payments, "
                      "settlement files and rows, runs, discrepancies, review items)")  # fmt: skip

    print(
        f"\n{'rows':>10}{'wall s':>9}{'rows/s':>10}{'peak RSS MiB':>14}"
        f"{'import s':>10}{'import MiB':>12}{'match s':>9}{'match MiB':>11}  outcome"
    )
    for r in results:
        p = r.phases or {}
        print(
            f"{r.size:>10,}{r.seconds:>9.1f}{r.rows_per_second:>10,.0f}{r.peak_rss_mib:>14.1f}"
            + (
                f"{p['import_seconds']:>10.1f}{mib(p['import_peak_kib']):>12.1f}"
                f"{p['match_seconds']:>9.1f}{mib(p['match_peak_kib']):>11.1f}"
                if p
                else f"{'-':>10}{'-':>12}{'-':>9}{'-':>11}"
            )
            + f"  {'OK' if r.expected_ok else 'WRONG'}"
        )
    ratio = None
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large.peak_rss_mib / small.peak_rss_mib
        print(
            f"\npeak RSS {large.size:,} / {small.size:,}: {ratio:.2f} (target ~1.0: flat); rows/s "
            f"{small.rows_per_second:,.0f} at {small.size:,} and {large.rows_per_second:,.0f} at "
            f"{large.size:,} (bank rows + our payments per second of the whole command)"
        )
    total = time.monotonic() - began
    print(f"total wall time of the benchmark: {total:.0f} s")
    path = save(
        "reconcile",
        {
            "sizes": sizes,
            "anomalies_per_kind": ANOMALIES,
            "results": [asdict(r) for r in results],
            "peak_rss_ratio": ratio,
            "total_seconds": total,
        },
    )
    print(f"saved {path.relative_to(ROOT)}")
    if not all(r.expected_ok for r in results):
        raise SystemExit("the outcome counts differ from the injected anomalies")


if __name__ == "__main__":
    main()
