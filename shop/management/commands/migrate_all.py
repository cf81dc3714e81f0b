"""Migrate `default` and every order shard, creating missing PostgreSQL databases."""

from __future__ import annotations

from typing import Any

import psycopg
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from psycopg import sql

from shop.sharding import all_database_aliases


class Command(BaseCommand):
    help = "Migrate the default database and every order shard (one command for all aliases)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-create",
            action="store_true",
            help="Do not create missing PostgreSQL databases (fail instead).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = options["verbosity"]
        for alias in all_database_aliases():
            settings_dict = connections[alias].settings_dict
            postgres = settings_dict["ENGINE"] == "django.db.backends.postgresql"
            if postgres and not options["no_create"] and _postgres_create_if_missing(settings_dict):
                self.stdout.write(f"created database {settings_dict['NAME']} for {alias}")
            self.stdout.write(self.style.MIGRATE_HEADING(f"Migrating {alias}"))
            call_command(
                "migrate", database=alias, interactive=False, verbosity=max(0, verbosity - 1)
            )
        self.stdout.write(self.style.SUCCESS(f"migrated {len(all_database_aliases())} databases"))


def _postgres_create_if_missing(settings_dict: dict[str, Any]) -> bool:
    params = {
        "dbname": "postgres",
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
        "connect_timeout": settings_dict.get("OPTIONS", {}).get("connect_timeout", 5),
    }
    name = settings_dict["NAME"]
    try:
        with psycopg.connect(
            **{k: v for k, v in params.items() if v is not None}, autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if exists:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    except psycopg.Error as exc:
        raise CommandError(f"cannot reach PostgreSQL to check database {name}: {exc}") from exc
