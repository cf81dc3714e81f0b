from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from apps.inventory.models import Stock
from apps.inventory.services import stock_receive

# The most units one operator entry may add (a delivery, a sale's stock): far beyond any real
# one, so a typo is refused, and a flash sale's units (a 32-bit column) and the bigint counters
# stay far from overflowing.
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
