"""Payments: the ledger and the channels live on `default`; a buyer's payments, their channel
attempts and refunds live on the order's shard (found from their ids alone)."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from shop.sharding import sharded

# --- Ledger (default) ---------------------------------------------------------------------------


class Account(models.Model):
    """A balance in one currency. Buyer wallets can never go below zero (a CHECK, not code);
    the shop's own accounts (funding, clearing per channel, fees, merchant) may, because they
    mirror money owed to or by the outside world."""

    class Kind(models.TextChoices):
        WALLET = "wallet"
        MERCHANT = "merchant"
        CLEARING = "clearing"
        FEES = "fees"
        FUNDING = "funding"

    key = models.CharField(max_length=100, unique=True, help_text='e.g. "wallet:42:EUR"')
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    channel = models.CharField(max_length=40, blank=True)
    currency = models.CharField(max_length=3)
    available = models.BigIntegerField(default=0)
    frozen = models.BigIntegerField(default=0)
    allow_negative = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        # Topping up a wallet moves money (from the funding account): its own permission.
        permissions = [("topup_account", "Can top up wallets")]
        constraints = [
            models.CheckConstraint(
                condition=Q(available__gte=0) | Q(allow_negative=True),
                name="payments_account_available_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(frozen__gte=0), name="payments_account_frozen_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.key


class Transfer(models.Model):
    """One double-entry journal transaction: its entries sum to zero. Posted once per
    (kind, reference), so a repeated posting has no second effect."""

    kind = models.CharField(max_length=30)
    reference = models.CharField(max_length=100)
    memo = models.CharField(max_length=300, blank=True)
    actor = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "reference"], name="payments_transfer_once")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}"


class Entry(models.Model):
    class Bucket(models.TextChoices):
        AVAILABLE = "available"
        FROZEN = "frozen"

    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    bucket = models.CharField(max_length=10, choices=Bucket.choices)
    amount = models.BigIntegerField(help_text="Signed minor units: + credit, − debit.")

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "entries"

    def __str__(self) -> str:
        return f"{self.account} {self.bucket} {self.amount:+d}"


# --- Channels (default) -------------------------------------------------------------------------


class PaymentChannel(models.Model):
    """A bank the shop routes card payments to. Live health and breaker state are in Redis."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    methods = models.JSONField(default=list, help_text='e.g. ["card"]')
    opens_at = models.TimeField(help_text="Service hours start (shop time zone).")
    closes_at = models.TimeField(help_text="Service hours end; equal to opens_at means 24 h.")
    min_amount = models.BigIntegerField(default=0)
    max_amount = models.BigIntegerField(default=10**12)
    fee_bps = models.PositiveIntegerField(default=0, help_text="Fee in basis points.")
    fee_fixed = models.PositiveIntegerField(default=0, help_text="Fixed fee, minor units.")
    expected_latency_ms = models.PositiveIntegerField(default=100)
    priority = models.IntegerField(default=0, help_text="Tie-breaker after health and cost.")

    class Meta:
        ordering = ["priority", "code"]

    def __str__(self) -> str:
        return self.code

    def fee_for(self, amount: int) -> int:
        return amount * self.fee_bps // 10_000 + self.fee_fixed


# --- TCC coordinator log (default) -------------------------------------------------------------


class TccTransaction(models.Model):
    """A global transaction of the TCC coordinator (one per payment). Its status is the
    coordinator's decision; the recovery job drives anything left half-way."""

    class Status(models.TextChoices):
        TRYING = "trying"
        CONFIRMING = "confirming"
        CONFIRMED = "confirmed"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    xid = models.CharField(max_length=64, unique=True)
    payment_id = models.BigIntegerField(db_index=True)
    order_id = models.BigIntegerField()
    user_id = models.BigIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRYING)
    attempts = models.PositiveIntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "TCC transaction"
        indexes = [
            models.Index(
                fields=["next_retry_at"],
                name="payments_tcc_open",
                condition=Q(status__in=["trying", "confirming", "cancelling"]),
            )
        ]

    def __str__(self) -> str:
        return f"{self.xid} ({self.status})"


class TccBranch(models.Model):
    class Status(models.TextChoices):
        REGISTERED = "registered"
        TRIED = "tried"
        FAILED = "failed"
        UNKNOWN = "unknown"
        CONFIRMED = "confirmed"
        CANCELLED = "cancelled"

    transaction = models.ForeignKey(
        TccTransaction, on_delete=models.CASCADE, related_name="branches"
    )
    branch = models.CharField(max_length=64, help_text='"order", "wallet" or "channel:<code>"')
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.REGISTERED)
    detail = models.CharField(max_length=300, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["transaction", "branch"], name="payments_branch_once")
        ]

    def __str__(self) -> str:
        return f"{self.branch}: {self.status}"


class WebhookEvent(models.Model):
    """A verified channel notification, recorded once by its event id."""

    channel = models.CharField(max_length=40)
    event_id = models.CharField(max_length=100)
    event_type = models.CharField(max_length=60)
    payment_id = models.CharField(max_length=64, blank=True)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["channel", "event_id"], name="payments_webhook_once")
        ]

    def __str__(self) -> str:
        return f"{self.channel}:{self.event_id} {self.event_type}"


# --- Payments (order shard) ---------------------------------------------------------------------


class PaymentStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"


# A payment in one of these holds its order: no second one may start (a DB constraint).
ACTIVE_PAYMENT_STATUSES = [PaymentStatus.PENDING, PaymentStatus.UNKNOWN, PaymentStatus.SUCCEEDED]


@sharded
class Payment(models.Model):
    """One request to pay an order (one Idempotency-Key). At most one payment per order is
    pending, unknown or succeeded at any time: a partial unique index, so no code path can
    start a second charge while one is live or after one succeeded."""

    id = models.BigIntegerField(primary_key=True)
    order = models.ForeignKey("orders.Order", on_delete=models.PROTECT, related_name="payments")
    user_id = models.BigIntegerField()
    method = models.CharField(max_length=10, help_text='"wallet" or "card"')
    channel = models.CharField(max_length=40, blank=True)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(
        max_length=10, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    captured_amount = models.BigIntegerField(default=0)
    refunded_amount = models.BigIntegerField(default=0)
    failure_code = models.CharField(max_length=40, blank=True)
    failure_detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "order"],
                condition=Q(status__in=ACTIVE_PAYMENT_STATUSES),
                name="payments_one_live_payment_per_order",
            ),
            models.CheckConstraint(
                condition=Q(refunded_amount__lte=models.F("captured_amount"))
                & Q(captured_amount__lte=models.F("amount"))
                & Q(refunded_amount__gte=0),
                name="payments_amounts_consistent",
            ),
        ]
        indexes = [
            # A day's captures at one channel (nightly reconciliation), without a scan of
            # every payment ever made.
            models.Index(
                fields=["channel", "settled_at"],
                condition=Q(captured_amount__gt=0),
                name="payments_settled_captures",
            ),
            # Payments left unknown or pending, oldest first (the stuck-payments janitor).
            models.Index(
                fields=["updated_at"],
                condition=Q(status__in=["unknown", "pending"]),
                name="payments_unsettled",
            ),
        ]

    def __str__(self) -> str:
        return f"payment {self.id} ({self.status})"


@sharded
class PaymentAttempt(models.Model):
    """One call sequence at one channel for a payment, and why that channel was chosen."""

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="attempts")
    user_id = models.BigIntegerField()
    channel = models.CharField(max_length=40)
    outcome = models.CharField(max_length=20, help_text="authorized, declined, error, unknown…")
    reason = models.CharField(max_length=300, help_text="Why this channel was chosen.")
    detail = models.CharField(max_length=300, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.channel}: {self.outcome}"


@sharded
class Refund(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.BigIntegerField(primary_key=True)
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    user_id = models.BigIntegerField()
    amount = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    failure_detail = models.CharField(max_length=300, blank=True)
    # Who decided this refund and why: "operator:<id>", "buyer:<id>" (a buyer's cancel of a
    # paid order) or "system"; the reason is also the ledger memo and the order's history.
    actor = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        # Refunding is an operator's decision: support staff get this one permission (through
        # a group) rather than the whole admin.
        permissions = [("refund_payment", "Can refund payments")]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payments_refund_positive")
        ]
        # A day's succeeded refunds (nightly reconciliation).
        indexes = [
            models.Index(
                fields=["updated_at"],
                condition=Q(status="succeeded"),
                name="payments_refunds_settled",
            )
        ]

    def __str__(self) -> str:
        return f"refund {self.id} of {self.amount} ({self.status})"


@sharded
class RefundRequest(models.Model):
    """A buyer's request for a refund of a processing or fulfilled order, which an operator
    approves (a refund runs) or declines (with a note the buyer sees). At most one per order
    is open at a time: a partial unique index, not only code."""

    class Status(models.TextChoices):
        REQUESTED = "requested"
        APPROVED = "approved"
        DECLINED = "declined"

    id = models.BigIntegerField(primary_key=True)
    order = models.ForeignKey(
        "orders.Order", on_delete=models.PROTECT, related_name="refund_requests"
    )
    user_id = models.BigIntegerField()
    amount = models.BigIntegerField(help_text="Minor units asked for.")
    reason = models.CharField(max_length=500)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.REQUESTED)
    decision_note = models.CharField(max_length=500, blank=True, help_text="Shown to the buyer.")
    decided_by = models.CharField(max_length=100, blank=True, help_text='"operator:<id>"')
    decided_at = models.DateTimeField(null=True, blank=True)
    refund_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "order"],
                condition=Q(status="requested"),
                name="payments_one_open_refund_request",
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0), name="payments_refund_request_positive"
            ),
        ]
        indexes = [
            # The operators' queue: open requests, oldest first.
            models.Index(
                fields=["created_at"],
                condition=Q(status="requested"),
                name="payments_refund_requests_open",
            )
        ]

    def __str__(self) -> str:
        return f"refund request {self.id} of {self.amount} ({self.status})"
