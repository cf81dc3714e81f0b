from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from shop.sharding import sharded


class PendingInvalidation(models.Model):
    """A cache group whose invalidation could not reach the cache; retried periodically.

    Without it an edit made while Redis was unreachable would be served stale for a whole TTL
    once Redis came back.
    """

    group = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.group


@sharded
class IdSequence(models.Model):
    """The id sequence on shards that have no native sequence (SQLite, embedded profile)."""

    name = models.CharField(max_length=40, primary_key=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


@sharded
class OutboxMessage(models.Model):
    """A task to publish, written in the same shard transaction as the change that causes it.

    The relay publishes it after commit (fast path) or on its periodic sweep; delivery is at
    least once, and the task receives ``message_id`` to deduplicate.
    """

    user_id = models.BigIntegerField(help_text="Shard key: whose change caused the message.")
    task = models.CharField(max_length=200)
    kwargs = models.JSONField(default=dict)
    queue = models.CharField(max_length=100)
    available_at = models.DateTimeField(help_text="Not published before this time.")
    countdown = models.PositiveIntegerField(default=0, help_text="Seconds, passed to Celery.")
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    context = models.JSONField(
        default=dict,
        blank=True,
        help_text="Log context of the change (request id, user, order) handed to the task.",
    )

    class Meta:
        indexes = [
            models.Index(
                fields=["available_at", "id"],
                name="shop_outbox_unpublished",
                condition=Q(published_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.task} #{self.pk}"


@sharded
class ProcessedMessage(models.Model):
    """A message a consumer has applied; recorded in the same transaction as its effect."""

    user_id = models.BigIntegerField()
    consumer = models.CharField(max_length=100)
    message_id = models.CharField(max_length=100)
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "consumer", "message_id"], name="shop_processed_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer}:{self.message_id}"


@sharded
class IdempotencyRecord(models.Model):
    """One ``Idempotency-Key`` of one buyer: in flight (owned by a token until locked_until),
    then completed with the response to replay. Completed in the same transaction as the
    effect it guards."""

    class Status(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETED = "completed"

    user_id = models.BigIntegerField()
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.IN_FLIGHT)
    owner_token = models.CharField(max_length=32)
    locked_until = models.DateTimeField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    resource_id = models.CharField(
        max_length=64, blank=True, help_text="What the first request created, once it has."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user_id", "key"], name="shop_idempotency_key_once")
        ]
        indexes = [models.Index(fields=["created_at"], name="shop_idempotency_created")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key} ({self.status})"


class ManualReviewItem(models.Model):
    """Something the shop could not settle by itself and an operator must look at."""

    class Status(models.TextChoices):
        OPEN = "open"
        ASSIGNED = "assigned"
        RESOLVED = "resolved"

    kind = models.CharField(max_length=60, help_text="e.g. order_processing")
    reference = models.CharField(max_length=100, help_text="e.g. the order id")
    summary = models.CharField(max_length=300)
    details = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolution_note = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open item per problem: a redelivered "file it" has no second effect.
            models.UniqueConstraint(
                fields=["kind", "reference"],
                condition=~Q(status="resolved"),
                name="shop_review_one_open_per_reference",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.reference}: {self.summary}"


class FenceStatus(models.TextChoices):
    TRIED = "tried"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"  # cancelled before any try: a late try must be refused


class TccFence(models.Model):
    """A TCC branch's fence on `default` (Seata's tcc_fence_log, DTM's barrier): written in
    the same local transaction as the branch's business effect."""

    xid = models.CharField(max_length=64)
    branch = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=FenceStatus.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["xid", "branch"], name="shop_tcc_fence_once")
        ]
        indexes = [models.Index(fields=["created_at"], name="shop_tcc_fence_created")]

    def __str__(self) -> str:
        return f"{self.xid}/{self.branch}: {self.status}"


@sharded
class TccShardFence(models.Model):
    """The same fence for branches whose effect lives on an order shard."""

    user_id = models.BigIntegerField()
    xid = models.CharField(max_length=64)
    branch = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=FenceStatus.choices)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "xid", "branch"], name="shop_tcc_shard_fence_once"
            )
        ]
        indexes = [models.Index(fields=["created_at"], name="shop_tcc_shard_fence_created")]

    def __str__(self) -> str:
        return f"{self.xid}/{self.branch}: {self.status}"


class RateLimitRule(models.Model):
    """An operator's override of one rate-limit layer (settings.RATE_LIMITS holds the
    defaults). Read through shop.runtime, so a change applies within RUNTIME_CONFIG_TTL
    seconds in every process, without a restart."""

    # Every request is checked against these: a zero would make the limiter refuse to run
    # (shop.ratelimit.Limit), so the form and the database refuse it first.
    name = models.SlugField(max_length=40, unique=True)
    rate = models.PositiveIntegerField(
        validators=[MinValueValidator(1)], help_text="Requests allowed per period."
    )
    period_seconds = models.FloatField(
        validators=[MinValueValidator(0.001)], help_text="The period, in seconds."
    )
    burst = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="Requests allowed back to back."
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rate__gte=1, burst__gte=1, period_seconds__gt=0),
                name="shop_ratelimitrule_usable",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}: {self.rate}/{self.period_seconds:g}s"


class Switch(models.Model):
    """A degradation switch operators flip during a sale (see settings.SWITCHES)."""

    name = models.SlugField(max_length=40, unique=True)
    on = models.BooleanField(default=False)
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {'on' if self.on else 'off'}"


class Alert(models.Model):
    """One alert (kind, key) and its de-duplication state (shop.alerts): every occurrence is
    counted; a notification goes out only when none went out within ALERT_DEDUP_WINDOW."""

    class Severity(models.TextChoices):
        INFO = "info"
        WARNING = "warning"
        CRITICAL = "critical"

    kind = models.CharField(max_length=40, help_text="What fired, e.g. breaker_open.")
    key = models.CharField(max_length=200, help_text="Which one, e.g. the channel.")
    severity = models.CharField(max_length=10, choices=Severity.choices)
    subject = models.CharField(max_length=300, help_text="As of the latest occurrence.")
    body = models.TextField(blank=True)
    occurrences = models.PositiveIntegerField(default=1)
    notifications = models.PositiveIntegerField(default=1, help_text="Notifications sent.")
    notified_occurrences = models.PositiveIntegerField(
        default=1, help_text="Occurrences counted when the last notification went out."
    )
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    last_notified_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_seen_at"]
        constraints = [
            # The row alert_raise upserts on: one per (kind, key), whatever the concurrency.
            models.UniqueConstraint(fields=["kind", "key"], name="shop_alert_once")
        ]
        indexes = [models.Index(fields=["last_seen_at"], name="shop_alert_last_seen")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}: {self.subject}"
