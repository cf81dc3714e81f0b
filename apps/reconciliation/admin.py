"""Operators: reconciliation runs, the discrepancy workflow (open → resolved, by whom, with a
note), CSV export, settlement-file upload, and a chart of the last weeks."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone

from apps.payments.models import PaymentChannel
from apps.reconciliation.exceptions import SettlementFileInvalid, SettlementUnavailable
from apps.reconciliation.models import Discrepancy, ReconciliationRun, SettlementFile
from apps.reconciliation.selectors import runs_latest_completed_per_day
from apps.reconciliation.services import (
    discrepancy_resolve,
    reconcile_day,
    settlement_import,
    settlement_lines,
)
from shop.adminkit import ReadOnlyAdmin, admin_view_requiring
from shop.errors import ShopError

CHART_DAYS = 30
BASELINE = 150  # y of the chart's axis, in SVG units


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ReadOnlyAdmin):
    list_display = [
        "business_day",
        "channel",
        "status",
        "ours_count",
        "ours_total",
        "bank_count",
        "bank_total",
        "matched_count",
        "discrepancy_summary",
        "unmatched_amount",
        "finished_at",
    ]
    list_filter = ["status", "channel", "business_day"]
    change_list_template = "admin/reconciliation/run_change_list.html"

    @admin.display(description="discrepancies")
    def discrepancy_summary(self, run: ReconciliationRun) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(run.discrepancies.items())) or "none"

    def get_urls(self) -> list:
        return [
            path(
                "chart/",
                admin_view_requiring(
                    self.admin_site, self.chart, "reconciliation.view_reconciliationrun"
                ),
                name="reconciliation_chart",
            ),
            *super().get_urls(),
        ]

    def chart(self, request: HttpRequest) -> HttpResponse:
        """Discrepancies and unmatched amount per day, as inline SVG (no external assets)."""
        since = timezone.localdate() - timedelta(days=CHART_DAYS - 1)
        per_day = {
            row["business_day"]: row
            for row in Discrepancy.objects.filter(business_day__gte=since)
            .values("business_day")
            .annotate(count=Count("id"))
        }
        amounts: dict[date, int] = {}
        for run in runs_latest_completed_per_day(since=since):  # a re-run day counts once
            amounts[run.business_day] = amounts.get(run.business_day, 0) + run.unmatched_amount
        days = [since + timedelta(days=i) for i in range(CHART_DAYS)]
        bars = _bars(
            days,
            [per_day.get(d, {}).get("count", 0) for d in days],
            [amounts.get(d, 0) for d in days],
        )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Reconciliation, last {CHART_DAYS} days",
            "bars": bars,
            "width": 60 + CHART_DAYS * 24,
            "open_count": Discrepancy.objects.filter(status=Discrepancy.Status.OPEN).count(),
        }
        return render(request, "admin/reconciliation/chart.html", context)


def _bars(days: list[date], counts: list[int], amounts: list[int]) -> list[dict[str, Any]]:
    top_count, top_amount = max([*counts, 1]), max([*amounts, 1])
    return [
        {
            "day": day,
            "count": count,
            "amount": amount,
            "x": 40 + i * 24,
            "count_y": BASELINE - round(120 * count / top_count),
            "count_height": round(120 * count / top_count),
            "amount_y": BASELINE - round(120 * amount / top_amount),
            "amount_height": round(120 * amount / top_amount),
        }
        for i, (day, count, amount) in enumerate(zip(days, counts, amounts, strict=True))
    ]


class ResolveForm(forms.Form):
    note = forms.CharField(widget=forms.Textarea, help_text="What was done, for the next person.")


@admin.register(Discrepancy)
class DiscrepancyAdmin(ReadOnlyAdmin):
    list_display = [
        "business_day",
        "channel",
        "kind",
        "key",
        "ours_amount",
        "bank_amount",
        "status",
        "action",
        "resolved_by",
    ]
    list_filter = ["status", "kind", "channel", "business_day"]
    search_fields = ["key", "payment_id", "note", "action"]
    actions = ["resolve", "export_csv"]

    @admin.action(description="Resolve selected discrepancies (with a note)")
    def resolve(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        form = ResolveForm(request.POST if "note" in request.POST else None)
        if form.is_valid():
            try:
                count = discrepancy_resolve(
                    discrepancy_ids=list(queryset.values_list("id", flat=True)),
                    operator=request.user,
                    note=form.cleaned_data["note"],
                )
            except ShopError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                return None
            self.message_user(request, f"{count} discrepancy(ies) resolved.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Resolve discrepancies",
            "form": form,
            "items": queryset,
            "ids": queryset.values_list("id", flat=True),
        }
        return render(request, "admin/reconciliation/resolve.html", context)

    @admin.action(description="Export selected as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = [
            "business_day",
            "channel",
            "kind",
            "key",
            "payment_id",
            "ours_amount",
            "bank_amount",
            "ours_currency",
            "bank_currency",
            "bank_status",
            "status",
            "action",
            "note",
            "resolved_at",
        ]
        writer.writerow(columns)
        for row in queryset.order_by("business_day", "channel", "kind", "key").values_list(
            *columns
        ):
            writer.writerow(row)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="discrepancies.csv"'
        return response


class UploadForm(forms.Form):
    channel = forms.ChoiceField(choices=())
    business_day = forms.DateField(help_text="YYYY-MM-DD")
    file = forms.FileField(
        help_text="The channel's settlement CSV (see the README for the format)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["channel"].choices = [
            (c.code, c.name) for c in PaymentChannel.objects.order_by("code")
        ]


@admin.register(SettlementFile)
class SettlementFileAdmin(ReadOnlyAdmin):
    list_display = ["business_day", "channel", "source", "row_count", "imported_at", "imported_by"]
    list_filter = ["channel", "source"]
    change_list_template = "admin/reconciliation/file_change_list.html"

    def get_urls(self) -> list:
        return [
            path(
                "upload/",
                # Importing a file reconciles its day: that is adding settlement files.
                admin_view_requiring(
                    self.admin_site, self.upload, "reconciliation.add_settlementfile"
                ),
                name="reconciliation_upload",
            ),
            *super().get_urls(),
        ]

    def upload(self, request: HttpRequest) -> HttpResponse:
        form = UploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            lines = settlement_lines(data["file"].file)  # strict UTF-8, bounded lines
            settlement = summary = None
            try:
                settlement = settlement_import(
                    channel=data["channel"],
                    business_day=data["business_day"],
                    lines=lines,
                    source=SettlementFile.Source.UPLOADED,
                    actor=f"operator:{request.user.pk}",
                )
            except (SettlementFileInvalid, SettlementUnavailable) as exc:
                form.add_error("file", f"{exc.message} — nothing was imported.")
            if settlement is not None:
                try:
                    summary = reconcile_day(
                        channel=data["channel"],
                        business_day=data["business_day"],
                        settlement=settlement,
                    )
                except SettlementUnavailable as exc:  # e.g. the day is being reconciled now
                    form.add_error(
                        "file",
                        f"Imported {settlement.row_count} rows, but not reconciled: "
                        f"{exc.message} Upload the same file again later to reconcile it.",
                    )
            if summary is not None:
                run = summary.run
                self.message_user(
                    request,
                    f"Imported {settlement.row_count} rows; matched {run.matched_count}, "
                    f"{sum(run.discrepancies.values())} discrepancies ({summary.opened} new).",
                    messages.SUCCESS,
                )
                return HttpResponseRedirect(
                    reverse("admin:reconciliation_reconciliationrun_changelist")
                )
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload a settlement file",
            "form": form,
        }
        return render(request, "admin/reconciliation/upload.html", context)
