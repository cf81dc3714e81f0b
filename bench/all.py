"""Every benchmark scenario in one run, and one summary table (issue 13).

Runs bench/flash_sale.py, bench/catalog_read.py, bench/checkout.py and bench/payments.py one
after the other (each as its own process, same environment), collects the headline rows each
appends through ``bench.common.summary_rows`` and prints one table: scenario, rate, p50/p99,
errors, ratio to its baseline (measured in the same run), the target and whether it is met.
The table is written to ``bench/results/summary-<UTC date-time>.md`` and ``.json``.

    python bench/all.py [--seconds 15] [--only checkout,payments]
                        [--profile DIR [--tag before] [--cpu-only]]

``--profile DIR`` records a py-spy flame graph of one gunicorn worker during each headline
scenario's timed phase (``DIR/<name>-<tag>.svg``, names in SCRIPTS; wall-clock, waits
included, unless ``--cpu-only``); a profiled run is slower, so its table is not the
measurement.
bench/reconcile.py (a batch job, minutes long, no HTTP ratio) is not part of it: run
``make bench-reconcile`` on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, RESULTS, ROOT

# script, and the loads profiled with --profile: {regular expression over their names: the
# flame graph's file name}. The flash sale goes first: it runs a Celery worker on the shop's
# queues, which would otherwise spend the sale working off the notifications the checkout and
# payment runs leave queued.
SCRIPTS = {
    "flash_sale": ("bench/flash_sale.py", {r"^flash sale: ": "admission"}),
    "catalog_read": ("bench/catalog_read.py", {r"^product detail page$": "product-page"}),
    "checkout": (
        "bench/checkout.py",
        {r"^HTTP checkout: spread": "checkout-spread", r"^HTTP checkout: one hot": "checkout-hot"},
    ),
    "payments": (
        "bench/payments.py",
        {r"^HTTP wallet payment": "wallet-payment", r"^HTTP card payment": "card-payment"},
    ),
}
COLUMNS = ["scenario", "rate/s", "p50 ms", "p99 ms", "errors", "ratio", "baseline", "target",
           "met?"]  # fmt: skip


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def cells(row: dict) -> list[str]:
    return [
        row["scenario"],
        _number(row["rps"]),
        _number(row["p50_ms"], 1),
        _number(row["p99_ms"], 1),
        "-" if row["errors"] is None else str(row["errors"]),
        "-" if row["ratio"] is None else f"{row['ratio']:.3f}x",
        f"{row['baseline']} ({_number(row['baseline_rps'])}/s)",
        "-" if row["target"] is None else f">= {row['target']}x",
        row["met"],
    ]


def render_text(rows: list[dict]) -> str:
    table = [COLUMNS, *(cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    numeric = {1, 2, 3, 4, 5}
    return "\n".join(
        "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in
                  enumerate(zip(line, widths, strict=True))).rstrip()
        for line in table
    )  # fmt: skip


def render_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * 5 + "---|---|---|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )  # fixed command, no input
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, help="passed to every script (their defaults)")
    parser.add_argument("--only", help=f"comma-separated, of {', '.join(SCRIPTS)}")
    parser.add_argument("--profile", metavar="DIR", help="record py-spy flame graphs into DIR")
    parser.add_argument("--tag", default="", help="suffix of the flame graphs' names")
    parser.add_argument(
        "--cpu-only", action="store_true", help="flame graphs of on-CPU samples (no waits)"
    )
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = set(chosen) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    began, measured = time.monotonic(), commit()  # the code the scripts start with
    exits = {}
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        summary = Path(tmp) / "rows.jsonl"
        summary.touch()
        for name in chosen:
            script, profile_names = SCRIPTS[name]
            env = {**os.environ, "BENCH_SUMMARY": str(summary)}
            if args.profile:
                env.update(BENCH_PROFILE=str(Path(args.profile).resolve()),
                           BENCH_PROFILE_TAG=args.tag,
                           BENCH_PROFILE_NAMES=json.dumps(profile_names),
                           BENCH_PROFILE_IDLE="0" if args.cpu_only else "1")  # fmt: skip
            command = [PYTHON, script] + (["--seconds", str(args.seconds)] if args.seconds else [])
            print(f"\n===== {' '.join(command[1:])} =====", flush=True)
            exits[name] = subprocess.run(command, cwd=ROOT, env=env).returncode  # nosec B603
        rows = [json.loads(line) for line in summary.read_text().splitlines() if line.strip()]

    took = time.monotonic() - began
    failed = {name: code for name, code in exits.items() if code != 0}
    head = (
        f"bench-all {stamp} UTC, commit {measured}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {took:.0f} s"
        + (", PROFILED (py-spy attached: rates are not measurements)" if args.profile else "")
    )
    notes = [f"{row['scenario']}: {row['note']}" for row in rows if row.get("note")]
    notes += [f"{name} exited {code} (see its output above)" for name, code in failed.items()]
    print(f"\n{head}\n\n{render_text(rows)}")
    for note in notes:
        print(f"  note: {note}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / f"summary-{stamp}"
    markdown = f"{head}\n\n{render_markdown(rows)}\n" + "".join(f"\n- {n}" for n in notes)
    base.with_suffix(".md").write_text(markdown + ("\n" if notes else ""))
    base.with_suffix(".json").write_text(
        json.dumps({"head": head, "rows": rows, "exits": exits, "seconds": took}, indent=2)
    )
    print(f"\nsummary: {base.with_suffix('.md').relative_to(ROOT)} (and .json)")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
