"""Operators' manual-review queue."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.module_loading import import_string

from shop.adminkit import ReadOnlyAdmin
from shop.errors import ShopError
from shop.models import Alert, ManualReviewItem, RateLimitRule, Switch
from shop.review import review_assign, review_resolve
from shop.runtime import runtime_refresh, switch_set


class ManualReviewForm(forms.ModelForm):
    resolve = forms.BooleanField(
        required=False, help_text="Close this item with the note above (the note is required)."
    )

    class Meta:
        model = ManualReviewItem
        fields = ["assignee", "resolution_note"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = get_user_model().objects.filter(
            is_staff=True, is_active=True
        )


@admin.register(ManualReviewItem)
class ManualReviewItemAdmin(admin.ModelAdmin):
    form = ManualReviewForm
    list_display = ["created_at", "kind", "reference", "summary", "status", "assignee"]
    list_filter = ["status", "kind", "assignee"]
    search_fields = ["reference", "summary"]
    readonly_fields = [
        "kind",
        "reference",
        "summary",
        "details",
        "status",
        "resolved_by",
        "resolved_at",
        "created_at",
    ]
    actions = ["assign_to_me", "retry_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: ManualReviewItem, form: Any, change: bool
    ) -> None:
        if "assignee" in form.changed_data and obj.assignee is not None:
            review_assign(item_ids=[obj.id], assignee=obj.assignee)
        if form.cleaned_data.get("resolve"):
            try:
                review_resolve(item=obj, operator=request.user, note=obj.resolution_note)
            except ShopError as exc:
                self.message_user(request, exc.message, messages.ERROR)
            return
        ManualReviewItem.objects.filter(id=obj.id).update(resolution_note=obj.resolution_note)

    @admin.action(description="Assign selected items to me")
    def assign_to_me(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = review_assign(
            item_ids=list(queryset.values_list("id", flat=True)), assignee=request.user
        )
        self.message_user(request, f"{count} item(s) assigned to you.", messages.SUCCESS)

    @admin.action(description="Retry selected items now")
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        for item in queryset:
            handler_path = settings.MANUAL_REVIEW_RETRY.get(item.kind)
            if handler_path is None:
                self.message_user(
                    request, f"{item}: nothing to retry for {item.kind}.", messages.WARNING
                )
                continue
            try:
                import_string(handler_path)(item=item, operator=request.user)
            except ShopError as exc:
                self.message_user(request, f"{item.reference}: {exc.message}", messages.ERROR)
            else:
                self.message_user(request, f"{item.reference}: queued again.", messages.SUCCESS)


@admin.register(RateLimitRule)
class RateLimitRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "rate", "period_seconds", "burst", "enabled", "updated_at"]
    list_editable = ["rate", "period_seconds", "burst", "enabled"]
    help_text = "Defaults live in settings.RATE_LIMITS; a row here overrides one layer."

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        runtime_refresh()


class SwitchForm(forms.ModelForm):
    class Meta:
        model = Switch
        fields = ["name", "on", "note"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        if name not in settings.SWITCHES:
            raise forms.ValidationError(f"Known switches: {', '.join(sorted(settings.SWITCHES))}.")
        return name


@admin.register(Switch)
class SwitchAdmin(admin.ModelAdmin):
    form = SwitchForm
    list_display = ["name", "on", "description", "note", "updated_at"]
    list_editable = ["on", "note"]

    @admin.display(description="what it does")
    def description(self, switch: Switch) -> str:
        return settings.SWITCHES.get(switch.name, "(unknown switch)")

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        switch_set(name=obj.name, on=obj.on, note=obj.note)  # every process, pages retired


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    """What fired, how often, and when operators were last told (shop.alerts). Read-only: the
    rows are the de-duplication state."""

    list_display = [
        "last_seen_at",
        "severity",
        "kind",
        "key",
        "subject",
        "occurrences",
        "notifications",
        "last_notified_at",
    ]
    list_filter = ["kind", "severity"]
    search_fields = ["key"]
    ordering = ["-last_seen_at"]
    date_hierarchy = "last_seen_at"
