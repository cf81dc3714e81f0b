"""Put stock of a SKU on flash sale and load its gate: `start_flash_sale --sku CODE --stock N
[--per-user-limit K]`."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.flashsales.selectors import flash_sale_gate
from apps.flashsales.services import flash_sale_start
from shop.errors import ShopError


class Command(BaseCommand):
    help = "Put N more units of a SKU on flash sale (queued checkout), load its counters, preheat."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sku", required=True, help="SKU code")
        parser.add_argument("--stock", required=True, type=int, help="units to put on sale")
        parser.add_argument("--per-user-limit", type=int, help="most units per buyer")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            sale = flash_sale_start(
                sku_code=options["sku"],
                stock=options["stock"],
                per_user_limit=options["per_user_limit"],
            )
        except ShopError as exc:
            raise CommandError(exc.message) from exc
        call_command("preheat_cache", "--ids", str(sale.sku.product_id), "--no-progress",
                     stdout=self.stdout)  # fmt: skip
        state = flash_sale_gate(sku_id=sale.sku_id)
        gate = (
            f"gate loaded: {state.remaining} units admissible, {state.queued} queued"
            if state and state.remaining is not None
            else "no Redis: checkouts take the database path"
        )
        limit = options["per_user_limit"] or "none"
        self.stdout.write(
            self.style.SUCCESS(
                f"Flash sale of {options['sku']} started (limit per buyer: {limit}); {gate}."
            )
        )
