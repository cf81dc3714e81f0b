"""Operators: channels (health, breakers, switches), payments across shards (and refunding
them), buyers' refund requests (approve / decline), TCC transactions, accounts (with audited
top-ups) and the journal. Money is never edited by hand.

Refunding needs ``payments.refund_payment`` (apps.payments.permissions): the refund actions
are hidden from everyone else, and refused with a clear message if posted anyway."""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import path, reverse

from apps.payments.models import (
    Account,
    Entry,
    Payment,
    PaymentAttempt,
    PaymentChannel,
    Refund,
    RefundRequest,
    TccBranch,
    TccTransaction,
    Transfer,
    WebhookEvent,
)
from apps.payments.permissions import user_may_refund
from apps.payments.services import (
    payment_settle_now,
    refund_create,
    refund_request_approve,
    refund_request_decline,
)
from apps.payments.services.channels import breaker_for, health_for
from apps.payments.services.ledger import wallet_topup
from apps.payments.services.refunds import (
    REASON_MAX_LENGTH,
    operator_actor,
    refundable_amount,
)
from shop.adminkit import ReadOnlyAdmin, admin_view_requiring
from shop.cache import cache_available
from shop.errors import ShopError
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
    fields = ["id", "amount", "status", "actor", "reason", "failure_detail", "created_at"]
    readonly_fields = fields


REFUND_REFUSED = (
    "Only operators with the permission “payments | refund | Can refund payments” may refund. "
    "Nothing was done."
)


class RefundActionsMixin:
    """Actions that move money back: shown only to users who may refund
    (``@admin.action(permissions=["refund"])``); posted by anyone else, refused with a clear
    message and no effect."""

    refund_actions: tuple[str, ...] = ()

    def has_refund_permission(self, request: HttpRequest) -> bool:
        return user_may_refund(request.user)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # Checked before Django's action handling, which would only say "No action selected"
        # (or, with no action left to offer, nothing at all).
        if (
            request.method == "POST"
            and request.POST.get("action") in self.refund_actions
            and not user_may_refund(request.user)
        ):
            self.message_user(request, REFUND_REFUSED, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context)

    def _intermediate(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        *,
        action: str,
        form: forms.Form,
        title: str,
        intro: str,
        submit: str,
    ) -> TemplateResponse:
        """The form an action asks before it acts (posted back to the same changelist, with
        the same selection, plus ``apply``)."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "submit": submit,
            "form": form,
            "objects": list(queryset),
            "action": action,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/payments/action_form.html", context)


class RefundForm(forms.Form):
    amount = forms.IntegerField(
        min_value=1,
        required=False,
        help_text="Minor units (cents). One payment: defaults to all that is left. Several "
        "payments: each is refunded in full (what is left of it); leave this empty.",
    )
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why (kept on the refund, in the order's history and in the journal).",
    )


@admin.register(Payment)
class PaymentAdmin(RefundActionsMixin, ShardedAdmin):
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
    actions = ["settle_now", "refund"]
    refund_actions = ("refund",)

    @admin.display(description="payment", ordering="id")
    def payment_id(self, payment: Payment) -> str:
        return str(payment.id)

    @admin.action(description="Settle now (ask the channel)")
    def settle_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for payment_id in queryset.values_list("id", flat=True):
            status = payment_settle_now(payment_id=payment_id)
            self.message_user(request, f"payment {payment_id}: transaction {status}")

    @admin.action(description="Refund… (asks the amount and why)", permissions=["refund"])
    def refund(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if not user_may_refund(request.user):  # the mixin refuses first; never rely on one
            self.message_user(request, REFUND_REFUSED, messages.ERROR)
            return None
        most = settings.ADMIN_REFUND_BATCH_MAX
        payments = list(queryset.filter(status="succeeded")[: most + 1])
        if not payments:
            self.message_user(request, "None of these payments was captured.", messages.WARNING)
            return None
        if len(payments) > most:
            self.message_user(request, f"Select at most {most} payments at a time.", messages.ERROR)
            return None
        single = len(payments) == 1
        form = RefundForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            amount, reason = form.cleaned_data["amount"], form.cleaned_data["reason"]
            if amount and not single:
                self.message_user(
                    request,
                    "Several payments are refunded in full: leave the amount empty.",
                    messages.ERROR,
                )
            else:
                self._refund_each(request, payments, amount=amount, reason=reason)
                return None
        elif not form.is_bound:
            form = RefundForm(
                initial={"amount": refundable_amount(payments[0]) if single else None}
            )
        return self._intermediate(
            request,
            queryset.filter(id__in=[p.id for p in payments]),
            action="refund",
            form=form,
            title="Refund a payment" if single else f"Refund {len(payments)} payments in full",
            intro="The money goes back the way it came (card or wallet), booked in the "
            "journal with your name and reason.",
            submit="Refund",
        )

    def _refund_each(
        self, request: HttpRequest, payments: list[Payment], *, amount: int | None, reason: str
    ) -> None:
        actor = operator_actor(request.user.pk)
        for payment in payments:
            wanted = amount or refundable_amount(payment)
            if wanted <= 0:
                self.message_user(
                    request, f"payment {payment.id}: nothing left to refund.", messages.WARNING
                )
                continue
            try:
                refund = refund_create(
                    order_id=payment.order_id, amount=wanted, actor=actor, reason=reason
                )
            except ShopError as exc:
                self.message_user(request, f"payment {payment.id}: {exc.message}", messages.ERROR)
                continue
            level = {"succeeded": messages.SUCCESS, "failed": messages.ERROR}.get(
                refund.status, messages.WARNING
            )
            outcome = {
                "succeeded": "done",
                "pending": "the channel is unavailable; it is retried every minute",
                "failed": f"refused by the channel ({refund.failure_detail})",
            }[refund.status]
            self.message_user(
                request,
                f"payment {payment.id}: refund {refund.id} of {refund.amount} "
                f"{payment.currency}: {outcome}.",
                level,
            )


class DeclineForm(forms.Form):
    note = forms.CharField(
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Why not: the buyer reads this on their order.",
    )


@admin.register(RefundRequest)
class RefundRequestAdmin(RefundActionsMixin, ShardedAdmin):
    """Buyers' refund requests, one shard at a time (an id finds one on any shard)."""

    list_display = [
        "request_id",
        "order_id_text",
        "status",
        "amount",
        "reason",
        "created_at",
        "decided_by",
        "decision_note",
    ]
    list_filter = [ShardFilter, "status"]
    actions = ["approve", "decline"]
    refund_actions = ("approve", "decline")

    @admin.display(description="request", ordering="id")
    def request_id(self, refund_request: RefundRequest) -> str:
        return str(refund_request.id)

    @admin.display(description="order")
    def order_id_text(self, refund_request: RefundRequest) -> str:
        return str(refund_request.order_id)

    @admin.action(description="Approve (refund runs)", permissions=["refund"])
    def approve(self, request: HttpRequest, queryset: QuerySet) -> None:
        if not user_may_refund(request.user):
            self.message_user(request, REFUND_REFUSED, messages.ERROR)
            return
        for request_id in queryset.values_list("id", flat=True):
            try:
                decided = refund_request_approve(request_id=request_id, operator=request.user)
            except ShopError as exc:
                self.message_user(request, f"request {request_id}: {exc.message}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"request {request_id}: approved, refund {decided.refund_id}.",
                    messages.SUCCESS,
                )

    @admin.action(description="Decline… (asks why)", permissions=["refund"])
    def decline(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if not user_may_refund(request.user):
            self.message_user(request, REFUND_REFUSED, messages.ERROR)
            return None
        form = DeclineForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            for request_id in queryset.values_list("id", flat=True):
                try:
                    refund_request_decline(
                        request_id=request_id, operator=request.user, note=form.cleaned_data["note"]
                    )
                except ShopError as exc:
                    self.message_user(
                        request, f"request {request_id}: {exc.message}", messages.ERROR
                    )
                else:
                    self.message_user(request, f"request {request_id}: declined.", messages.SUCCESS)
            return None
        return self._intermediate(
            request,
            queryset,
            action="decline",
            form=form,
            title="Decline refund requests",
            intro="The buyer sees your note on their order.",
            submit="Decline",
        )


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
            path(
                "top-up/",
                # It moves money: a permission of its own, not the right to read accounts.
                admin_view_requiring(self.admin_site, self.top_up, "payments.topup_account"),
                name="payments_account_topup",
            ),
            *super().get_urls(),
        ]

    def top_up(self, request: HttpRequest) -> HttpResponse:
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
