"""The benchmark tooling's pure parts: summary rows (ratio, target, met?), the table bench/all.py
renders from them, and bench/flame_top.py's reading of a flame graph. No service, no load."""

from __future__ import annotations

import json

from bench.all import render_markdown, render_text
from bench.common import LoadResult, summary_row, summary_rows
from bench.flame_top import analyse


def _result(rps: float) -> LoadResult:
    return LoadResult("x", "http://127.0.0.1/", 100, 2, 10.0, rps, 3.5, 9.25, "wrk")


def test_summary_row_compares_with_the_baseline_and_the_target():
    met = summary_row("s", _result(60.0), baseline="b", baseline_rps=100.0, target=0.5)
    missed = summary_row("s", _result(40.0), baseline="b", baseline_rps=100.0, target=0.5)
    assert (met["ratio"], met["met"]) == (0.6, "yes")
    assert (missed["ratio"], missed["met"]) == (0.4, "no")
    assert (met["p50_ms"], met["p99_ms"], met["errors"]) == (3.5, 9.25, 2)


def test_a_row_without_the_targets_baseline_is_not_judged():
    row = summary_row("card", _result(40.0), baseline="stand-in", baseline_rps=100.0, target=None)
    assert (row["ratio"], row["met"]) == (0.4, "n/a")
    assert summary_row("r", {"rps": 5.0}, baseline="b", baseline_rps=0.0, target=0.8)["met"] == (
        "n/a"
    )


def test_rows_go_to_the_summary_file_only_when_one_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("BENCH_SUMMARY", raising=False)
    row = summary_row("s", {"rps": 5.0}, baseline="b", baseline_rps=10.0, target=0.8)
    summary_rows([row])  # no file named: nothing written, no error
    path = tmp_path / "rows.jsonl"
    monkeypatch.setenv("BENCH_SUMMARY", str(path))
    summary_rows([row])
    summary_rows([row])
    assert [json.loads(line)["ratio"] for line in path.read_text().splitlines()] == [0.5, 0.5]


def test_the_table_shows_each_rows_numbers():
    rows = [
        summary_row("checkout", _result(60.0), baseline="raw", baseline_rps=100.0, target=0.35),
        summary_row("refusals", {"rps": 5.0}, baseline="b", baseline_rps=10.0, target=0.8),
    ]
    text, markdown = render_text(rows), render_markdown(rows)
    assert "0.600x" in text and "yes" in text and "raw (100/s)" in text
    assert markdown.splitlines()[2].split(" | ")[1:6] == ["60", "3.5", "9.2", "2", "0.600x"]
    assert markdown.splitlines()[3].split(" | ")[2:5] == ["-", "-", "-"]  # no latencies known


def test_flame_top_reads_inclusive_and_self_samples():
    def frame(name: str, depth: int, x: int, w: int) -> str:
        return (
            f'<g><title>{name} ({w} samples, 1%)</title><rect x="0%" y="{depth * 16}" '
            f'width="1%" height="15" fill="red" fg:x="{x}" fg:w="{w}"/></g>'
        )

    svg = "".join(
        [
            frame("all", 0, 0, 10),
            frame("view (apps/orders/api.py:10)", 1, 0, 10),
            frame("query (django/db/models/query.py:5)", 2, 0, 6),
            frame("wait (psycopg/connection.py:9)", 3, 0, 5),
            frame("view (apps/orders/api.py:12)", 2, 6, 2),  # recursion: counted once inclusive
        ]
    )
    total, inclusive, own, by_package = analyse(svg)
    assert total == 10
    assert inclusive["view (apps/orders/api.py)"] == 10
    assert inclusive["wait (psycopg/connection.py)"] == 5
    assert own["wait (psycopg/connection.py)"] == 5
    assert own["view (apps/orders/api.py)"] == 2 + 2  # 10 - 6 - 2 at depth 1, 2 at depth 2
    assert by_package["psycopg"] == 5 and by_package["django"] == 1
