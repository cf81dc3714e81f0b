from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse

from apps.flashsales.models import FlashSale
from apps.flashsales.selectors import flash_sale_gate
from apps.flashsales.services import flash_sale_end, flash_sale_repair, flash_sale_start
from apps.inventory.admin import UNITS_PER_ENTRY_MAX
from shop.adminkit import admin_view_requiring
from shop.errors import ShopError


class FlashSaleForm(forms.Form):
    sku = forms.CharField(max_length=64, help_text="SKU code")
    stock = forms.IntegerField(
        min_value=0, max_value=UNITS_PER_ENTRY_MAX, help_text="Units to put on sale now."
    )
    per_user_limit = forms.IntegerField(min_value=1, max_value=UNITS_PER_ENTRY_MAX, required=False)


@admin.register(FlashSale)
class FlashSaleAdmin(admin.ModelAdmin):
    list_display = ["sku", "units", "per_user_limit", "active", "gate", "started_at", "ended_at"]
    list_select_related = ["sku"]
    list_filter = ["active"]
    actions = ["end_sales", "repair_gates"]
    change_list_template = "admin/flashsales/flashsale/change_list.html"

    @admin.display(description="per buyer")
    def per_user_limit(self, sale: FlashSale) -> int | None:
        return sale.sku.per_user_limit

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="gate (Redis)")
    def gate(self, sale: FlashSale) -> str:
        state = flash_sale_gate(sku_id=sale.sku_id)
        if state is None or state.remaining is None:
            return "not loaded"
        return f"{state.remaining} admissible, {state.queued} queued, {state.seq} admitted"

    def get_urls(self) -> list:
        return [
            path(
                "start/",
                admin_view_requiring(self.admin_site, self.start, "flashsales.add_flashsale"),
                name="flashsales_flashsale_start",
            ),
            *super().get_urls(),
        ]

    def start(self, request: HttpRequest) -> Any:

        form = FlashSaleForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                flash_sale_start(
                    sku_code=form.cleaned_data["sku"],
                    stock=form.cleaned_data["stock"],
                    per_user_limit=form.cleaned_data["per_user_limit"],
                )
            except ShopError as exc:
                form.add_error("sku", exc.message)
            else:
                self.message_user(request, "Flash sale started; its gate is loaded.")
                return HttpResponseRedirect(reverse("admin:flashsales_flashsale_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "title": "Start a flash sale",
        }
        return render(request, "admin/flashsales/flashsale/start.html", context)

    @admin.action(description="End selected flash sales")
    def end_sales(self, request: HttpRequest, queryset: Any) -> None:

        for sale in queryset:
            flash_sale_end(sku_id=sale.sku_id)
        self.message_user(request, "Flash sale(s) ended.")

    @admin.action(description="Check the gates against the database now")
    def repair_gates(self, request: HttpRequest, queryset: Any) -> None:

        repaired = sum(flash_sale_repair(sku_id=sale.sku_id) for sale in queryset)
        self.message_user(request, f"{repaired} gate(s) corrected.")
