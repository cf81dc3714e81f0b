"""Orders live on the buyer's order shard. No foreign key leaves the shard: a line keeps the
SKU and product ids plus a snapshot of the name and unit price at purchase time."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from shop.sharding import sharded


class OrderStatus(models.TextChoices):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    PROCESSING = "processing"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


@sharded
class Order(models.Model):
    # A 64-bit id carrying its logical shard (shop.sharding.ids), never an autoincrement.
    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField(db_index=True, help_text="The buyer; also the shard key.")
    status = models.CharField(
        max_length=20, choices=OrderStatus.choices, default=OrderStatus.PENDING_PAYMENT
    )
    currency = models.CharField(max_length=3)
    total = models.BigIntegerField(help_text="Minor units.")
    expires_at = models.DateTimeField(help_text="Unpaid after this, the order expires.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    # Set while a payment of this order is being decided (TCC try..confirm/cancel): the order
    # may then neither expire nor be cancelled, so a capture never meets a released stock.
    payment_started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(total__gte=0), name="orders_total_not_negative"),
            models.CheckConstraint(
                condition=Q(status__in=OrderStatus.values), name="orders_status_known"
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                name="orders_pending_by_expiry",
                condition=Q(status="pending_payment"),
            ),
            models.Index(fields=["user_id", "-id"], name="orders_by_buyer"),
        ]

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"


@sharded
class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    user_id = models.BigIntegerField()
    sku_id = models.BigIntegerField()
    sku_code = models.CharField(max_length=64)
    product_id = models.BigIntegerField()
    name = models.CharField(max_length=300, help_text="Snapshot at purchase time.")
    unit_price = models.BigIntegerField(help_text="Minor units, snapshot at purchase time.")
    quantity = models.PositiveIntegerField()
    line_total = models.BigIntegerField()
    allocated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "order", "sku_id"], name="orders_one_line_per_sku"
            ),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="orders_line_quantity"),
            models.CheckConstraint(
                condition=Q(line_total=F("unit_price") * F("quantity")),
                name="orders_line_total_adds_up",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} × {self.name}"


@sharded
class OrderEvent(models.Model):
    """What happened to an order, when, by whom and why."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    user_id = models.BigIntegerField()
    kind = models.CharField(max_length=40)
    from_status = models.CharField(max_length=20, blank=True)
    to_status = models.CharField(max_length=20, blank=True)
    actor = models.CharField(max_length=100, help_text='"user:<id>", "system" or "operator:<id>"')
    reason = models.CharField(max_length=300, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_status}→{self.to_status}"


@sharded
class FulfilmentStep(models.Model):
    """A fulfilment step done for an order: recorded once, so a redelivered task skips it."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="steps")
    user_id = models.BigIntegerField()
    step = models.CharField(max_length=40)
    done_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user_id", "order", "step"], name="orders_step_once")
        ]

    def __str__(self) -> str:
        return f"{self.step} for order {self.order_id}"


@sharded
class LoyaltyEntry(models.Model):
    """Loyalty points earned by a paid order (one entry per order, never two)."""

    user_id = models.BigIntegerField(db_index=True)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="loyalty_entries")
    points = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user_id", "order"], name="orders_loyalty_once")
        ]

    def __str__(self) -> str:
        return f"{self.points} points for order {self.order_id}"


@sharded
class CheckoutTicket(models.Model):
    """A checkout accepted into the queue (peak shaving). It always ends `accepted` (with its
    order) or `rejected` (with a reason the buyer sees); never lost."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        ACCEPTED = "accepted"
        REJECTED = "rejected"

    id = models.BigIntegerField(primary_key=True)
    user_id = models.BigIntegerField()
    items = models.JSONField(help_text='[{"sku": code, "quantity": n}]')
    gate_sku_id = models.BigIntegerField(
        null=True, blank=True, help_text="The flash-sale SKU whose gate admitted it."
    )
    gate_quantity = models.PositiveIntegerField(default=0)
    seq = models.BigIntegerField(default=0, help_text="Position in the gate's arrival order.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    order_id = models.BigIntegerField(null=True, blank=True)
    reject_code = models.CharField(max_length=40, blank=True)
    reject_detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["gate_sku_id"],
                name="orders_ticket_queued_by_sku",
                condition=Q(status="queued"),
            )
        ]

    def __str__(self) -> str:
        return f"ticket {self.id} ({self.status})"
