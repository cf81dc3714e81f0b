"""Reconciliation: what the banks say they settled, matched against what the shop believes it
was paid, per channel and business day. Everything here lives on `default`."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class SettlementFile(models.Model):
    """One channel's settlement file for one business day, as imported (rows below)."""

    class Source(models.TextChoices):
        FETCHED = "fetched"
        UPLOADED = "uploaded"
        FILE = "file"

    channel = models.CharField(max_length=40)
    business_day = models.DateField()
    source = models.CharField(max_length=10, choices=Source.choices)
    sha256 = models.CharField(max_length=64)
    row_count = models.PositiveIntegerField(default=0)
    imported_at = models.DateTimeField(auto_now_add=True)
    imported_by = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-business_day", "channel", "-id"]

    def __str__(self) -> str:
        return f"{self.channel} {self.business_day} ({self.row_count} rows, {self.source})"


class SettlementRow(models.Model):
    file = models.ForeignKey(SettlementFile, on_delete=models.CASCADE, related_name="rows")
    line_no = models.PositiveIntegerField()
    channel_transaction_id = models.CharField(max_length=128)
    payment_id = models.CharField(max_length=128)
    sort_key = models.CharField(max_length=140, help_text="Merge order shared with our side.")
    type = models.CharField(max_length=10)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20)
    settled_at = models.DateTimeField()
    fee = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["file", "sort_key", "type", "line_no"])]

    def __str__(self) -> str:
        return f"{self.type} {self.payment_id} {self.amount} {self.currency}"


class Outcome(models.TextChoices):
    MATCHED = "MATCHED"
    SYSTEM_ONLY = "SYSTEM_ONLY"
    BANK_ONLY = "BANK_ONLY"
    AMOUNT_MISMATCH = "AMOUNT_MISMATCH"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    STATUS_MISMATCH = "STATUS_MISMATCH"
    DUPLICATE = "DUPLICATE"


class ReconciliationRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    channel = models.CharField(max_length=40)
    business_day = models.DateField()
    file = models.ForeignKey(SettlementFile, on_delete=models.PROTECT, null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    ours_count = models.PositiveIntegerField(default=0)
    ours_total = models.BigIntegerField(default=0)
    bank_count = models.PositiveIntegerField(default=0)
    bank_total = models.BigIntegerField(default=0)
    matched_count = models.PositiveIntegerField(default=0)
    discrepancies = models.JSONField(default=dict, blank=True, help_text="Count per outcome.")
    unmatched_amount = models.BigIntegerField(default=0, help_text="Sum over discrepancies.")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-business_day", "channel", "-id"]

    def __str__(self) -> str:
        return f"{self.channel} {self.business_day} ({self.status})"


class Discrepancy(models.Model):
    """One difference between the two sides, found once however often the day is re-run."""

    class Status(models.TextChoices):
        OPEN = "open"
        RESOLVED = "resolved"

    channel = models.CharField(max_length=40)
    business_day = models.DateField()
    kind = models.CharField(max_length=20, choices=Outcome.choices)
    key = models.CharField(max_length=160, help_text="payment id and type, or the bank's id")
    payment_id = models.CharField(max_length=128, blank=True)
    ours_amount = models.BigIntegerField(null=True, blank=True)
    bank_amount = models.BigIntegerField(null=True, blank=True)
    ours_currency = models.CharField(max_length=3, blank=True)
    bank_currency = models.CharField(max_length=3, blank=True)
    ours_status = models.CharField(max_length=20, blank=True)
    bank_status = models.CharField(max_length=20, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    action = models.CharField(
        max_length=300, blank=True, help_text="What the shop did about it by itself."
    )
    note = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    first_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    last_run = models.ForeignKey(ReconciliationRun, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-business_day", "channel", "kind", "key"]
        verbose_name_plural = "discrepancies"
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "business_day", "kind", "key"], name="reconciliation_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.channel} {self.business_day})"

    @property
    def difference(self) -> int:
        return abs((self.bank_amount or 0) - (self.ours_amount or 0))
