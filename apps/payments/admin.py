"""Operators: channels (health, breakers, switches), payments across shards, TCC transactions,
accounts (with audited top-ups) and the journal. Money is never edited by hand."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse

from apps.payments.models import (
    Account,
    Entry,
    Payment,
    PaymentAttempt,
    PaymentChannel,
    Refund,
    TccBranch,
    TccTransaction,
    Transfer,
    WebhookEvent,
)
from apps.payments.services import payment_settle_now
from apps.payments.services.channels import breaker_for, health_for
from apps.payments.services.ledger import wallet_topup
from shop.adminkit import ReadOnlyAdmin
from shop.cache import cache_available
from shop.locks import cache_is_redis
from shop.sharding.admin import ShardedAdmin, ShardedInline, ShardFilter


@admin.register(PaymentChannel)
class PaymentChannelAdmin(admin.ModelAdmin):
    list_display = [
        "code",
        "name",
        "enabled",
        "live_health",
        "breaker",
        "opens_at",
        "closes_at",
        "fee_bps",
        "priority",
    ]
    list_editable = ["enabled"]
    actions = ["enable", "disable", "force_open", "force_close"]

    @admin.display(description="health (last 5 min)")
    def live_health(self, channel: PaymentChannel) -> str:
        stats = health_for(channel.code).read()
        if stats is None:
            return "unknown (no Redis)"
        if not stats.total:
            return "no calls yet"
        return f"{stats.success_rate:.0%} of {stats.total}, ~{stats.mean_latency_ms:.0f} ms"

    @admin.display(description="breaker")
    def breaker(self, channel: PaymentChannel) -> str:
        snapshot = breaker_for(channel.code).snapshot()
        forced = " (forced)" if snapshot.get("forced") else ""
        return f"{snapshot['state']}{forced}, {snapshot.get('failures', 0)} recent failures"

    @admin.action(description="Enable selected channels")
    def enable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.message_user(request, f"{queryset.update(enabled=True)} channel(s) enabled.")

    @admin.action(description="Disable selected channels")
    def disable(self, request: HttpRequest, queryset: QuerySet) -> None:
        self.message_user(request, f"{queryset.update(enabled=False)} channel(s) disabled.")

    @admin.action(description="Force the breaker open (stop sending payments)")
    def force_open(self, request: HttpRequest, queryset: QuerySet) -> None:
        for channel in queryset:
            breaker_for(channel.code).force_open()
        self._breakers_changed(request, "Breaker(s) forced open.", messages.WARNING)

    @admin.action(description="Close the breaker (resume sending payments)")
    def force_close(self, request: HttpRequest, queryset: QuerySet) -> None:
        for channel in queryset:
            breaker_for(channel.code).force_close()
        self._breakers_changed(request, "Breaker(s) closed.", messages.SUCCESS)

    def _breakers_changed(self, request: HttpRequest, done: str, level: int) -> None:
        # With Redis unreachable a breaker lives per process: the change reached this web
        # process only, and the operator must know it did not reach the others.
        if cache_is_redis() and not cache_available():
            self.message_user(
                request,
                "Redis is unreachable: the breaker(s) changed in this web process only; "
                "other processes keep their own state until Redis is back.",
                messages.ERROR,
            )
            return
        self.message_user(request, done, level)


class PaymentAttemptInline(ShardedInline):
    model = PaymentAttempt
    fields = ["created_at", "channel", "outcome", "reason", "detail", "latency_ms"]
    readonly_fields = fields


class RefundInline(ShardedInline):
    model = Refund
    fields = ["id", "amount", "status", "failure_detail", "created_at"]
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(ShardedAdmin):
    list_display = [
        "payment_id",
        "order_id",
        "method",
        "channel",
        "amount",
        "status",
        "failure_code",
        "created_at",
    ]
    list_filter = [ShardFilter, "status", "method", "channel"]
    inlines = [PaymentAttemptInline, RefundInline]
    actions = ["settle_now"]

    @admin.display(description="payment", ordering="id")
    def payment_id(self, payment: Payment) -> str:
        return str(payment.id)

    @admin.action(description="Settle now (ask the channel)")
    def settle_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for payment_id in queryset.values_list("id", flat=True):
            status = payment_settle_now(payment_id=payment_id)
            self.message_user(request, f"payment {payment_id}: transaction {status}")


class TccBranchInline(admin.TabularInline):
    model = TccBranch
    extra = 0
    can_delete = False
    fields = ["branch", "status", "detail", "updated_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TccTransaction)
class TccTransactionAdmin(ReadOnlyAdmin):
    list_display = ["xid", "status", "order_id", "attempts", "next_retry_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["xid", "=payment_id", "=order_id"]
    inlines = [TccBranchInline]
    actions = ["drive_now"]

    @admin.action(description="Drive selected transactions now")
    def drive_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for tcc in queryset:
            self.message_user(
                request, f"{tcc.xid}: {payment_settle_now(payment_id=tcc.payment_id)}"
            )


class EntryInline(admin.TabularInline):
    model = Entry
    extra = 0
    can_delete = False
    fields = ["account", "bucket", "amount"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Transfer)
class TransferAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "kind", "reference", "memo", "actor"]
    list_filter = ["kind"]
    search_fields = ["reference", "memo"]
    inlines = [EntryInline]


# The largest single top-up an operator can enter (€1,000,000,000.00 in cents): far beyond any
# real credit, so a typo is refused, and balances stay far from the bigint column's limit.
TOPUP_MAX_MINOR_UNITS = 100_000_000_000


class TopUpForm(forms.Form):
    user = forms.ModelChoiceField(queryset=get_user_model().objects.filter(is_active=True))
    amount = forms.IntegerField(
        min_value=1, max_value=TOPUP_MAX_MINOR_UNITS, help_text="Minor units (cents)."
    )
    currency = forms.CharField(max_length=3, initial="EUR")
    note = forms.CharField(max_length=200, help_text="Why (kept in the journal).")


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["key", "kind", "user_id", "currency", "available", "frozen"]
    list_filter = ["kind", "currency"]
    search_fields = ["key", "=user_id"]
    change_list_template = "admin/payments/account/change_list.html"

    def get_urls(self) -> list:
        return [
            path("top-up/", self.admin_site.admin_view(self.top_up), name="payments_account_topup"),
            *super().get_urls(),
        ]

    def top_up(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("payments.view_account"):
            return HttpResponse(status=403)
        form = TopUpForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            transfer = wallet_topup(
                user_id=data["user"].pk,
                amount=data["amount"],
                currency=data["currency"].upper(),
                reference=f"admin-topup:{uuid.uuid4().hex}",
                actor=f"operator:{request.user.pk}: {data['note']}",
            )
            self.message_user(request, f"Topped up: journal transfer {transfer.id}.")
            return HttpResponseRedirect(reverse("admin:payments_account_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "title": "Top up a wallet",
        }
        return render(request, "admin/payments/account/top_up.html", context)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "channel", "event_type", "payment_id", "event_id"]
    list_filter = ["channel", "event_type"]
    search_fields = ["payment_id", "event_id"]
