"""Run the sandbox acquirer: simulated banks over HTTP (see apps.payments.sandbox.acquirer).

Touches none of the shop's databases: the acquirer keeps its own SQLite file (``--db``).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.payments.sandbox import acquirer


class Command(BaseCommand):
    help = (
        "Run the sandbox acquirer (channels alpha, beta, gamma) with fault injection, signed "
        "webhooks and daily settlement files, until SIGTERM or Ctrl-C."
    )
    # No system checks: they are about the shop, and this process never uses its databases.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=acquirer.DEFAULT_HOST)
        parser.add_argument(
            "--port",
            type=int,
            default=None,
            help=f"default: $ACQUIRER_PORT, else {acquirer.DEFAULT_PORT}; 0 picks a free port",
        )
        parser.add_argument(
            "--db",
            default=None,
            help="the acquirer's own SQLite file (default: var/acquirer.sqlite3)",
        )
        parser.add_argument(
            "--webhook-url",
            default=None,
            help="base URL for webhooks, sent to <url>/<channel>/ (default: $SHOP_WEBHOOK_URL; "
            "none: no webhooks)",
        )
        parser.add_argument(
            "--secret",
            default=None,
            help="webhook signing secret (default: settings.ACQUIRER_WEBHOOK_SECRET)",
        )
        parser.add_argument(
            "--faults",
            default=None,
            help='faults applied at start, JSON: {"alpha": {"decline_rate": 0.2}, ...}',
        )
        parser.add_argument(
            "--seed", type=int, default=None, help="seed of the fault dice (default: random)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["port"]
        if port is None:
            try:
                port = int(os.environ.get("ACQUIRER_PORT") or acquirer.DEFAULT_PORT)
            except ValueError as exc:
                raise CommandError("ACQUIRER_PORT must be a port number") from exc
        db = options["db"] or str(settings.BASE_DIR / "var" / "acquirer.sqlite3")
        webhook_url = options["webhook_url"] or os.environ.get("SHOP_WEBHOOK_URL") or None
        if webhook_url and urlsplit(webhook_url).scheme not in ("http", "https"):
            raise CommandError(f"--webhook-url {webhook_url!r} must be an http(s) URL")
        secret = options["secret"] or settings.ACQUIRER_WEBHOOK_SECRET
        try:
            faults = acquirer.parse_faults_option(options["faults"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc

        def ready(url: str) -> None:
            self.stdout.write(
                f"{acquirer.LISTENING.format(url=url)} (db {db}; webhooks "
                f"{'to ' + webhook_url if webhook_url else 'off'})"
            )
            self.stdout.flush()

        try:
            acquirer.serve(
                options["host"],
                port,
                db,
                webhook_url=webhook_url,
                secret=secret,
                faults=faults,
                seed=options["seed"],
                quiet=options["verbosity"] == 0,
                on_ready=ready,
            )
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{port}: {exc}") from exc
