"""Load hot products (and listings) into the cache before a sale."""

from __future__ import annotations

import re
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.catalog import selectors
from apps.catalog.services import catalog_preheat
from shop.cache import CacheUnavailable
from shop.locks import cache_is_redis

# Below this many products a progress bar is noise.
PROGRESS_THRESHOLD = 200


def _duration(text: str) -> int:
    """Seconds from "3600", "90s", "60m" or "2h"."""
    match = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", text)
    if not match or int(match.group(1)) <= 0:
        raise CommandError(f"--ttl {text!r} is not a positive duration like 3600, 90s, 60m or 2h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError as exc:
        raise CommandError(f"--ids {text!r} must be product ids separated by commas") from exc
    if not ids or any(i <= 0 for i in ids):
        raise CommandError("--ids needs at least one positive product id")
    return ids


class Command(BaseCommand):
    help = (
        "Preheat the cache: product documents and listings. Combine --all, --ids, --category "
        "and --top N (hotness). Idempotent: re-running refreshes the same keys."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--all", action="store_true", help="every visible product")
        parser.add_argument("--ids", help="comma-separated product ids")
        parser.add_argument(
            "--category", action="append", default=[], help="category slug or id (repeatable)"
        )
        parser.add_argument("--top", type=int, help="the N hottest products")
        parser.add_argument(
            "--ttl",
            default=str(settings.PREHEAT_TTL),
            help=f"lifetime, e.g. 3600, 90m, 2h (default {settings.PREHEAT_TTL} s), ±jitter",
        )
        parser.add_argument("--no-progress", action="store_true", help="never draw a progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if not (options["all"] or options["ids"] or options["category"] or options["top"]):
            raise CommandError("say what to preheat: --all, --ids, --category and/or --top N")
        if options["top"] is not None and options["top"] <= 0:
            raise CommandError("--top must be a positive number")
        ttl = _duration(options["ttl"])
        category_ids = [self._category_id(value) for value in options["category"]]
        if not cache_is_redis():
            self.stderr.write(
                self.style.WARNING(
                    "The cache is this process's local memory (REDIS_URL is not set): what this "
                    "command loads is not visible to the web server."
                )
            )

        product_ids = selectors.product_ids_for_preheat(
            everything=options["all"],
            ids=_ids(options["ids"]) if options["ids"] else (),
            category_ids=category_ids,
            top=options["top"],
        )
        # Listing pages: every category's with --all, else those asked for.
        listings: list[int | None] = []
        if options["all"]:
            listings = [None, *selectors.visible_category_ids()]
        elif category_ids:
            listings = list(category_ids)

        show_bar = not options["no_progress"] and len(product_ids) >= PROGRESS_THRESHOLD
        with tqdm(
            total=len(product_ids),
            unit="product",
            disable=None if show_bar else True,
            file=sys.stderr,
        ) as bar:
            try:
                result = catalog_preheat(
                    product_ids=product_ids,
                    listing_category_ids=listings,
                    ttl=ttl,
                    on_progress=bar.update,
                )
            except CacheUnavailable as exc:
                raise CommandError(
                    f"the cache is unreachable ({exc.__cause__}); nothing loaded"
                ) from exc

        jitter = round(settings.CACHE_TTL_JITTER * 100)
        self.stdout.write(
            self.style.SUCCESS(
                f"Preheated {result.products} products, {result.listings} listing pages and the "
                f"category tree in {result.seconds:.2f} s (TTL {ttl} s ±{jitter}%)."
            )
        )
        if result.missing:
            shown = ", ".join(str(i) for i in result.missing[:20])
            more = f" and {len(result.missing) - 20} more" if len(result.missing) > 20 else ""
            self.stdout.write(
                self.style.WARNING(f"Skipped (missing or not visible): {shown}{more}")
            )

    def _category_id(self, value: str) -> int:
        nodes = selectors.category_tree()["nodes"]
        if value.isdigit() and int(value) in nodes and nodes[int(value)]["visible"]:
            return int(value)
        node = selectors.category_get_by_slug(value)
        if node is None:
            raise CommandError(f"--category {value!r}: no such visible category")
        return node["id"]
