"""Check the guarantees of DESIGN.md §4 across every database; exit 1 on any violation."""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.utils.module_loading import import_string


class Command(BaseCommand):
    help = "Check the shop's invariants (stock, orders, ...) across every database."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        for path in settings.AUDIT_CHECKS:
            check = import_string(path)
            found = 0
            for violation in check():
                found += 1
                self.stdout.write(self.style.ERROR(f"VIOLATION [{path}] {violation}"))
            total += found
            label = "ok" if not found else f"{found} violation(s)"
            self.stdout.write(f"{path}: {label}")
        if total:
            self.stdout.write(self.style.ERROR(f"{total} violation(s)"))
            sys.exit(1)
        self.stdout.write(self.style.SUCCESS("all invariants hold"))
