"""Reconcile one business day: `reconcile --date YYYY-MM-DD [--channel NAME] [--file PATH]`."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.payments.selectors import card_channel_codes
from apps.reconciliation.exceptions import SettlementFileInvalid, SettlementUnavailable
from apps.reconciliation.models import SettlementFile
from apps.reconciliation.services import reconcile_day, settlement_import, settlement_lines


class Command(BaseCommand):
    help = "Match a business day's settlement files against the shop's payments (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--date", required=True, help="business day, YYYY-MM-DD")
        parser.add_argument("--channel", help="one channel (default: every card channel)")
        parser.add_argument("--file", help="a settlement CSV to use instead of fetching it")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            day = date.fromisoformat(options["date"])
        except ValueError as exc:
            raise CommandError(f"--date {options['date']!r} is not YYYY-MM-DD") from exc
        known = card_channel_codes()
        channels = [options["channel"]] if options["channel"] else known
        for channel in channels:
            if channel not in known:
                raise CommandError(f"--channel {channel!r} is not a card channel ({known})")
        if options["file"] and len(channels) != 1:
            raise CommandError("--file needs --channel: a file belongs to one channel")
        settlement = None
        if options["file"]:
            path = Path(options["file"])
            if not path.is_file():
                raise CommandError(f"--file {path} does not exist")
            try:
                with path.open("rb") as raw:
                    settlement = settlement_import(
                        channel=channels[0], business_day=day, lines=settlement_lines(raw),
                        source=SettlementFile.Source.FILE, actor="reconcile --file",
                    )  # fmt: skip
            except SettlementFileInvalid as exc:
                raise CommandError(f"{path}: {exc.message}; nothing was imported") from exc
        failed = False
        for channel in channels:
            try:
                summary = reconcile_day(channel=channel, business_day=day, settlement=settlement)
            except SettlementUnavailable as exc:
                self.stderr.write(self.style.ERROR(exc.message))
                failed = True
                continue
            except Exception as exc:  # noqa: BLE001 - recorded as a failed run; others go on
                self.stderr.write(self.style.ERROR(f"{channel}: {type(exc).__name__}: {exc}"))
                failed = True
                continue
            run = summary.run
            issues = ", ".join(f"{k} {v}" for k, v in sorted(run.discrepancies.items())) or "none"
            self.stdout.write(
                f"{channel} {day}: ours {run.ours_count} ({run.ours_total}), bank "
                f"{run.bank_count} ({run.bank_total}), matched {run.matched_count}; "
                f"discrepancies: {issues}; {summary.opened} new; unmatched amount "
                f"{run.unmatched_amount} (run {run.id})"
            )
        if failed:
            raise CommandError("some channels could not be reconciled")
