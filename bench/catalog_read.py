"""Catalog read benchmark (issue: foundation).

Under gunicorn (config/gunicorn.py, services profile, cache preheated): requests/s and p50/p99 for
the product detail and product list pages (and their API twins), each as a ratio to a trivial
view (/healthz) served by the same gunicorn in the same run.

    python bench/catalog_read.py [--seconds 15] [--connections 8]

Needs the local PostgreSQL, Redis and RabbitMQ of the services profile, and wrk (falls back to
a slower Python load generator when wrk is not installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    bench_env,
    gunicorn,
    load,
    manage,
    print_table,
    save,
    summary_row,
    summary_rows,
    web_model_text,
)


def _announce(targets: list[tuple[str, str]]) -> list[tuple[str, str]]:
    for name, _ in targets:
        print(f"  will load: {name}", flush=True)
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="gunicorn threads per worker (default: the shop's, config/gunicorn.py)",
    )  # fmt: skip
    args = parser.parse_args()

    env = bench_env()
    print("preparing: migrate, seed, preheat ...", flush=True)
    manage("migrate_all", env=env)
    manage("seed_demo", "--products", str(args.products), env=env)
    print(manage("preheat_cache", "--all", "--no-progress", env=env).strip())
    product = json.loads(
        manage(
            "shell",
            "-c",
            "import json; from apps.catalog.selectors import products_hot;"
            " p = products_hot(limit=1)[0]; print(json.dumps({'id': p['id'], 'slug': p['slug']}))",
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )

    with gunicorn(env, threads=args.threads) as base:
        targets = [
            ("trivial view (/healthz)", "/healthz"),
            ("product detail page", f"/products/{product['id']}/{product['slug']}/"),
            ("product list page", "/products/"),
            ("API product detail", f"/api/v1/products/{product['id']}/"),
            ("API product list", "/api/v1/products/"),
        ]
        with_page_cache = [
            load(name, base + path, seconds=args.seconds, connections=args.connections)
            for name, path in _announce(targets)
        ]

    # The same pages rendered per request from the cached product documents: what the
    # document cache alone gives when the shared page cache cannot be used (logged-in
    # buyers, or PAGE_CACHE_PATHS emptied).
    with gunicorn(bench_env(PAGE_CACHE_PATHS=""), threads=args.threads) as base:
        without = [
            load(f"{name} (no page cache)", base + path, seconds=args.seconds,
                 connections=args.connections)
            for name, path in _announce(targets[:3])
        ]  # fmt: skip

    print_table(
        [(r, with_page_cache[0]) for r in with_page_cache] + [(r, without[0]) for r in without]
    )
    ratio = with_page_cache[1].rps / with_page_cache[0].rps
    print(
        f"\ncached product detail page = {ratio:.2f}x the trivial view (target >= 0.60x); "
        f"{args.connections} connections, {args.seconds} s each, "
        f"{web_model_text({**env, **({'WEB_THREADS': str(args.threads)} if args.threads else {})})}"
        f", load tool {with_page_cache[0].tool}"
    )
    results = with_page_cache + without
    path = save("catalog_read", {"results": results, "args": vars(args)})
    print(
        f"raw results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}"
    )
    trivial = with_page_cache[0]
    summary_rows(
        [
            summary_row(
                "cached product page (one product)", with_page_cache[1],
                baseline="/healthz on the shop's gunicorn", baseline_rps=trivial.rps, target=0.8,
            )
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()
