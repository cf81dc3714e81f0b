"""``python manage.py drill <scenario>``: a game-day drill against a staging stack (see
docs/game-day.md). Exit 0: every scenario behaved and the audit is clean; 1: a scenario
misbehaved or the audit found violations; 2: refused (DEBUG off without the staging flag, or
bad arguments)."""

from __future__ import annotations

import json
import sys
from argparse import ArgumentTypeError
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.console.drills import SCENARIOS, DrillOptions, DrillResult, drill_run
from shop.parsing import ParseRefused, parse_int

STAGING_FLAG = "--i-know-this-is-staging"
# A drill rehearses, it does not load-test: bigger numbers belong in bench/.
MAX_COUNT = 10_000


def _positive(text: str) -> int:
    try:
        value = parse_int(text, min_value=1, max_value=MAX_COUNT)
    except ParseRefused as exc:
        raise ArgumentTypeError(str(exc)) from exc
    return value


class Command(BaseCommand):
    help = (
        "Rehearse a failure against a staging stack: inject it, observe the shop, restore, "
        "audit. Scenarios: " + ", ".join(SCENARIOS) + ", all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
        parser.add_argument(
            "--orders", type=_positive, help="payments per bank scenario; checkouts of the flood"
        )
        parser.add_argument("--units", type=_positive, help="the flood's units (default N/4)")
        parser.add_argument("--threads", type=_positive, default=8, help="the flood's threads")
        parser.add_argument("--channel", help="the card channel to drill (default: the best)")
        parser.add_argument(
            STAGING_FLAG,
            dest="staging",
            action="store_true",
            help="run although DEBUG is off (a staging stack, never production)",
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not options["staging"]:
            self.stderr.write(
                "Refused: DEBUG is off, so this may be production. A drill injects faults, "
                f"forces breakers and places orders; add {STAGING_FLAG} if this is a staging "
                "stack. Nothing was changed."
            )
            sys.exit(2)
        names = list(SCENARIOS) if options["scenario"] == "all" else [options["scenario"]]
        result = drill_run(
            names,
            DrillOptions(
                orders=options["orders"],
                units=options["units"],
                channel=options["channel"],
                threads=options["threads"],
            ),
        )
        if options["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2, default=str))
        else:
            self._print(result)
        if not result.ok:
            sys.exit(1)

    def _print(self, result: DrillResult) -> None:
        for report in result.reports:
            verdict = self.style.SUCCESS("OK") if report.ok else self.style.ERROR("FAILED")
            self.stdout.write(f"== {report.scenario}: {verdict}")
            for line in report.did:
                self.stdout.write(f"   did:      {line}")
            for key, value in report.observed.items():
                self.stdout.write(f"   observed: {key} = {value}")
            for line in report.restored:
                self.stdout.write(f"   restored: {line}")
            for line in report.problems:
                self.stdout.write(self.style.ERROR(f"   problem:  {line}"))
        self.stdout.write(f"== cleanup: {result.cleanup['counts']}")
        for code in result.cleanup["retired"]:
            self.stdout.write(f"   retired:  {code} (paid, refunded orders keep it; inactive)")
        for line in result.cleanup["problems"]:
            self.stdout.write(self.style.ERROR(f"   problem:  {line}"))
        self.stdout.write("== audit_invariants:")
        for line in result.audit_output.rstrip().splitlines():
            self.stdout.write(f"   {line}")
        if result.ok:
            self.stdout.write(self.style.SUCCESS("drill passed"))
        else:
            self.stdout.write(self.style.ERROR("drill FAILED"))
