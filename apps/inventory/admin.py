from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from apps.inventory.models import FlashSale, Stock
from apps.inventory.services import stock_receive
from shop.adminkit import admin_view_requiring

# The most units one operator entry may add (a delivery, a sale's stock): far beyond any real
# one, so a typo is refused, and FlashSale.units (a 32-bit column) and the bigint counters stay
# far from overflowing.
UNITS_PER_ENTRY_MAX = 1_000_000_000


class StockForm(forms.ModelForm):
    receive = forms.IntegerField(
        min_value=1,
        max_value=UNITS_PER_ENTRY_MAX,
        required=False,
        help_text="Units received now; added to received and available. "
        "Counts are never edited directly: the sum must always add up.",
    )

    class Meta:
        model = Stock
        fields = ["sku"]


@admin.register(Stock)
class StockAdmin(admin.ModelAdmin):
    form = StockForm
    list_display = ["sku", "received", "available", "reserved", "sold", "updated_at"]
    search_fields = ["sku__code", "sku__product__name"]
    list_select_related = ["sku"]
    autocomplete_fields = ["sku"]
    readonly_fields = ["received", "available", "reserved", "sold", "updated_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Stock | None = None) -> list[str]:
        return [*self.readonly_fields, "sku"] if obj else list(self.readonly_fields)

    def save_model(self, request: HttpRequest, obj: Stock, form: Any, change: bool) -> None:
        if not change:
            obj.save()
        quantity = form.cleaned_data.get("receive")
        if quantity:
            stock_receive(sku_id=obj.sku_id, quantity=quantity)
            obj.refresh_from_db()


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
    change_list_template = "admin/inventory/flashsale/change_list.html"

    @admin.display(description="per buyer")
    def per_user_limit(self, sale: FlashSale) -> int | None:
        return sale.sku.per_user_limit

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="gate (Redis)")
    def gate(self, sale: FlashSale) -> str:
        from apps.inventory.gate import gate_state

        state = gate_state(sku_id=sale.sku_id)
        if state is None or state.remaining is None:
            return "not loaded"
        return f"{state.remaining} admissible, {state.queued} queued, {state.seq} admitted"

    def get_urls(self) -> list:
        from django.urls import path

        return [
            path(
                "start/",
                admin_view_requiring(self.admin_site, self.start, "inventory.add_flashsale"),
                name="inventory_flashsale_start",
            ),
            *super().get_urls(),
        ]

    def start(self, request: HttpRequest) -> Any:
        from django.http import HttpResponseRedirect
        from django.shortcuts import render
        from django.urls import reverse

        from apps.orders.flash import flash_sale_start
        from shop.errors import ShopError

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
                return HttpResponseRedirect(reverse("admin:inventory_flashsale_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "title": "Start a flash sale",
        }
        return render(request, "admin/inventory/flashsale/start.html", context)

    @admin.action(description="End selected flash sales")
    def end_sales(self, request: HttpRequest, queryset: Any) -> None:
        from apps.orders.flash import flash_sale_end

        for sale in queryset:
            flash_sale_end(sku_id=sale.sku_id)
        self.message_user(request, "Flash sale(s) ended.")

    @admin.action(description="Check the gates against the database now")
    def repair_gates(self, request: HttpRequest, queryset: Any) -> None:
        from apps.orders.flash import flash_sale_repair

        repaired = sum(flash_sale_repair(sku_id=sale.sku_id) for sale in queryset)
        self.message_user(request, f"{repaired} gate(s) corrected.")
