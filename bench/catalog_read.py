"""Catalog read benchmark (issue 13: the cached product page).

Under gunicorn (services profile, documents preheated, every page asked for once before
its timed run): requests/s, p50/p99 and errors for the
product detail page and the API product detail, each *rotating over* ``--rotate`` products
(a wrk Lua script cycling the URLs, so the per-process L1 and Redis both see hundreds of
pages, not one), and for the product list pages. Every rate is compared with the minimal
Django site (``bench.minimal_site``: Security + Common middleware, one view) served by
gunicorn with the same workers and threads in the same run, measured just before and just
after each shop scenario (the mean of the two is that scenario's reference, so drifting load
on a shared machine does not skew a ratio); the shop's own ``/healthz`` is an extra line.

    python bench/catalog_read.py [--seconds 15] [--connections 8] [--workers 2] [--threads 1]
                                 [--rotate 300]

Needs the local PostgreSQL, Redis and RabbitMQ of the services profile, and wrk (falls back to
a slower Python load generator when wrk is not installed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LUA_STATUS_DONE,
    LoadResult,
    bench_env,
    gunicorn,
    load,
    load_mean,
    lua_list,
    manage,
    minimal_gunicorn,
    print_table,
    save,
    summary_row,
    summary_rows,
    web_model_text,
)

TARGET = 0.8

# Cycles through `paths`; each wrk connection starts at a different offset.
LUA = (
    """
local paths = {paths}
local threads = {{}}
local counter = 0
function setup(thread)
  table.insert(threads, thread)
  thread:set("offset", counter * 97)
  counter = counter + 1
end
local i = 0
function request()
  i = i + 1
  local path = paths[((offset or 0) + i) % #paths + 1]
  return wrk.format("GET", path)
end
statuses = {{}}
function response(status, headers, body)
  local label = headers["X-Page-Cache"] or "-"
  statuses[label] = (statuses[label] or 0) + 1
end
"""
    + LUA_STATUS_DONE
)  # no braces: .format() leaves it be


def _products(env: dict[str, str], count: int) -> list[dict]:
    code = (
        "import json; from apps.catalog.models import Product;"
        " from apps.catalog.selectors import product_ids_for_preheat as ids;"
        f" chosen = ids(everything=True)[:{count}];"
        " print(json.dumps(list(Product.objects.filter(id__in=chosen).values('id', 'slug'))))"
    )
    return json.loads(manage("shell", "-c", code, env=env).strip().splitlines()[-1])


def _rotating(directory: Path, name: str, paths: list[str]) -> Path:
    script = directory / f"{name}.lua"
    script.write_text(LUA.format(paths=lua_list(paths)))
    return script


def _fallback(base: str, paths: list[str]):
    """The Python fallback's version of the rotating script."""
    cycle = itertools.cycle(paths)
    lock = threading.Lock()

    def make() -> urllib.request.Request:
        with lock:
            path = next(cycle)
        return urllib.request.Request(base + path)

    return make


def _warm(base: str, paths: list[str]) -> None:
    """Ask for every URL once (4 at a time), so the timed run measures cached pages rather
    than the first render of each."""

    def get(path: str) -> None:
        # base is http://127.0.0.1:<port>, the server this benchmark just started
        with urllib.request.urlopen(base + path, timeout=30) as response:  # nosec B310
            response.read()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(get, paths))


def _load_all(
    base: str, targets: list[tuple[str, list[str]]], directory: Path, args: argparse.Namespace
) -> list[LoadResult]:
    results = []
    for name, paths in targets:
        print(f"  will load: {name} ({len(paths)} URL(s))", flush=True)
        _warm(base, paths)
        script = _rotating(directory, name.replace(" ", "_").replace("/", ""), paths)
        results.append(
            load(
                name,
                base + paths[0],
                seconds=args.seconds,
                connections=args.connections,
                script=script,
                make_request=_fallback(base, paths),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=500, help="products seeded")
    parser.add_argument("--rotate", type=int, default=300, help="product pages cycled through")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="gunicorn workers (default: the shop's, config/gunicorn.py)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="gunicorn threads per worker (default: the shop's, config/gunicorn.py)",
    )  # fmt: skip
    parser.add_argument(
        "--no-page-cache", action="store_true", help="also measure with PAGE_CACHE_PATHS empty"
    )
    args = parser.parse_args()
    if args.rotate > args.products:
        raise SystemExit("--rotate cannot exceed --products")

    env = bench_env()
    print("preparing: migrate, seed, preheat ...", flush=True)
    manage("migrate_all", env=env)
    manage("seed_demo", "--products", str(args.products), env=env)
    print(manage("preheat_cache", "--all", "--no-progress", env=env).strip())
    products = _products(env, args.rotate)
    if len(products) < args.rotate:
        raise SystemExit(f"only {len(products)} visible products; seed more (--products)")

    detail = [f"/products/{p['id']}/{p['slug']}/" for p in products]
    api_detail = [f"/api/v1/products/{p['id']}/" for p in products]
    listing = [f"/products/?page={page}" for page in (1, 2, 3)]
    api_listing = [f"/api/v1/products/?page={page}" for page in (1, 2, 3)]
    targets = [
        ("shop /healthz", ["/healthz"]),
        (f"product detail page ({len(detail)} rotating)", detail),
        ("product list page (3 pages)", listing),
        (f"API product detail ({len(api_detail)} rotating)", api_detail),
        ("API product list (3 pages)", api_listing),
    ]
    server = {"workers": args.workers, "threads": args.threads}
    model = {
        **env,
        **({"WEB_CONCURRENCY": str(args.workers)} if args.workers else {}),
        **({"WEB_THREADS": str(args.threads)} if args.threads else {}),
    }
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        directory = Path(tmp)
        # On a shared machine the load drifts during a run, so the baseline is measured
        # between the shop's scenarios (both servers up, one loaded at a time): each scenario
        # is compared with the mean of the minimal view measured just before and just after it.
        minimal = [("minimal Django view", ["/healthz"])]
        with minimal_gunicorn(env, **server) as minimal_base, gunicorn(env, **server) as base:
            minimals = _load_all(minimal_base, minimal, directory, args)
            cached = []
            for target in targets:
                cached += _load_all(base, [target], directory, args)
                minimals += _load_all(minimal_base, minimal, directory, args)
        paired = [
            load_mean(f"minimal view around: {result.name}", before, after)
            for result, before, after in zip(cached, minimals[:-1], minimals[1:], strict=True)
        ]
        baseline = load_mean("minimal Django view (mean of all)", *minimals)
        without: list[LoadResult] = []
        if args.no_page_cache:
            # What the document cache alone gives when the shared page cache cannot be used
            # (logged-in buyers, or PAGE_CACHE_PATHS emptied).
            with gunicorn(bench_env(PAGE_CACHE_PATHS=""), **server) as base:
                without = _load_all(
                    base,
                    [(f"{name} (no page cache)", paths) for name, paths in targets[1:2]],
                    directory,
                    args,
                )

    results = [*minimals, baseline, *cached, *without]
    print_table(
        [(baseline, baseline)]
        + list(zip(cached, paired, strict=True))
        + [(result, baseline) for result in without],
        ratio_label="x minimal",
    )
    print(
        "\n(each shop scenario against the minimal view measured just before and after it: "
        + ", ".join(f"{p.rps:.0f}" for p in minimals)
        + " req/s in turn)"
    )
    print("\nX-Page-Cache answers (the timed run):")
    for result in cached[1:]:
        print(f"  {result.name}: {result.statuses}")
    ratio = cached[1].rps / paired[1].rps
    print(
        f"\ncached product detail page ({len(detail)} rotating) = {ratio:.2f}x the minimal "
        f"Django view (target >= {TARGET:.2f}x: {'met' if ratio >= TARGET else 'NOT met'}); "
        f"{args.connections} connections, {args.seconds} s each, "
        f"{web_model_text(model)}, load tool {baseline.tool}"
    )
    path = save("catalog_read", {"results": results, "args": vars(args), "ratio": ratio})
    print(
        f"raw results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}"
    )
    summary_rows(
        [
            summary_row(
                f"cached product page ({len(detail)} rotating)", cached[1],
                baseline="minimal Django view, same worker model", baseline_rps=paired[1].rps,
                target=TARGET,
            )
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()
