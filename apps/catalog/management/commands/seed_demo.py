"""Seed a realistic, deterministic demo shop: catalog, stock, an operator and buyers."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.catalog.demo import demo_catalog_seed
from apps.inventory.services import stock_receive_many
from apps.payments.services.channels import channels_ensure_sandbox
from apps.payments.services.ledger import wallet_topup
from apps.users.services import user_ensure

DEFAULT_PASSWORD = "shopdemo"  # noqa: S105 - printed demo login, never for production
DEMO_WALLET = 100_000  # €1,000.00 in every demo buyer's wallet


class Command(BaseCommand):
    help = "Seed demo catalog, stock, an operator (admin) and buyers; prints their logins."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--products", type=int, default=500, help="products (default 500)")
        parser.add_argument("--users", type=int, default=1, help="buyer accounts (default 1)")
        parser.add_argument(
            "--password",
            default=None,
            help=f"password for the demo accounts (default for new ones: {DEFAULT_PASSWORD}; "
            "existing accounts keep theirs unless this is given)",
        )
        parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["products"] < 0 or options["users"] < 0:
            raise CommandError("--products and --users must not be negative")
        result = demo_catalog_seed(products=options["products"], seed=options["seed"])
        stock_receive_many(quantities=result.skus_created)
        self.stdout.write(
            f"catalog: {result.products_created} products added "
            f"({result.products_total} demo products in total), "
            f"{result.categories_created} categories added, "
            f"{len(result.skus_created)} SKUs stocked"
        )

        channels = channels_ensure_sandbox()
        self.stdout.write(f"payments: {channels} sandbox card channels")

        given = options["password"]
        password_hash = make_password(given or DEFAULT_PASSWORD)
        accounts = [("admin", "admin@example.com", True)]
        accounts += [
            ("buyer" if i == 1 else f"buyer{i}", f"buyer{i}@example.com", False)
            for i in range(1, options["users"] + 1)
        ]
        lines = []
        for username, email, staff in accounts:
            user, created = user_ensure(
                username=username,
                email=email,
                password_hash=password_hash,
                staff=staff,
                reset_password=bool(given),
            )
            if not staff:  # demo money to pay with (once per buyer: the reference is fixed)
                wallet_topup(user_id=user.pk, amount=DEMO_WALLET, currency="EUR",
                             reference=f"demo-seed:{username}", actor="seed_demo")  # fmt: skip
            shown = given or DEFAULT_PASSWORD if (given or created) else "(existing: unchanged)"
            lines.append(f"  {'operator' if staff else 'buyer':<8}  {username:<10}  {shown}")
        if len(lines) > 6:
            lines = [*lines[:5], f"  ... and {len(lines) - 5} more buyers with that password"]
        self.stdout.write(self.style.SUCCESS("Demo logins (role, username, password):"))
        for line in lines:
            self.stdout.write(line)
