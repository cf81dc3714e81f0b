"""Operators' catalog admin. Every save, delete and bulk action invalidates the cache after
commit through the catalog services, so shoppers never see an edit late."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.db.models import Count, Max, Min, QuerySet
from django.http import HttpRequest

from apps.catalog import services
from apps.catalog.models import Category, Product, ProductImage, Sku
from shop.parsing import ParseRefused, parse_id


class SkuInline(admin.TabularInline):
    model = Sku
    extra = 0
    fields = ["code", "attributes", "price", "currency", "per_user_limit", "is_active"]
    show_change_link = True


class ProductImageInline(admin.TabularInline):
    model = ProductImage
    extra = 0
    fields = ["url", "alt", "position"]


class CategoryTreeFilter(admin.SimpleListFilter):
    """Filter by a category and everything below it."""

    title = "category (with subcategories)"
    parameter_name = "in_category"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        categories = list(Category.objects.order_by("position", "name"))
        by_parent: dict[int | None, list[Category]] = {}
        for category in categories:
            by_parent.setdefault(category.parent_id, []).append(category)
        result: list[tuple[str, str]] = []

        def walk(parent_id: int | None, depth: int) -> None:
            for category in by_parent.get(parent_id, []):
                result.append((str(category.id), "— " * depth + category.name))
                walk(category.id, depth + 1)

        walk(None, 0)
        return result

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        try:
            frontier = {parse_id(self.value())}
        except ParseRefused as exc:  # the admin shows its "invalid filter" notice
            raise IncorrectLookupParameters(f"category: {exc}") from exc
        wanted: set[int] = set()
        while frontier:
            wanted |= frontier
            frontier = (
                set(Category.objects.filter(parent_id__in=frontier).values_list("id", flat=True))
                - wanted
            )
        return queryset.filter(category_id__in=wanted)


class CatalogWritesAdmin(admin.ModelAdmin):
    """Deletes and bulk (de)activation of rows that belong to products, invalidating those
    products after the admin's transaction commits."""

    product_id_field: str
    noun: str
    set_active: Callable[[list[int], bool], int]
    actions = ["activate", "deactivate"]

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        product_id = getattr(obj, self.product_id_field)
        super().delete_model(request, obj)
        services.catalog_changed(product_ids=[product_id])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        product_ids = list(queryset.values_list(self.product_id_field, flat=True))
        super().delete_queryset(request, queryset)
        services.catalog_changed(product_ids=product_ids)

    def _set_active(self, request: HttpRequest, queryset: QuerySet, active: bool) -> None:
        count = self.set_active(list(queryset.values_list("id", flat=True)), active)
        verb = "activated" if active else "deactivated"
        self.message_user(request, f"{count} {self.noun}(s) {verb}.", messages.SUCCESS)

    @admin.action(description="Activate selected %(verbose_name_plural)s")
    def activate(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, True)

    @admin.action(description="Deactivate selected %(verbose_name_plural)s")
    def deactivate(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._set_active(request, queryset, False)


@admin.register(Product)
class ProductAdmin(CatalogWritesAdmin):
    product_id_field = "id"
    noun = "product"
    set_active = staticmethod(
        lambda ids, active: services.products_set_active(product_ids=ids, active=active)
    )
    list_display = ["name", "category", "is_active", "hotness", "sku_count", "price_range"]
    list_filter = ["is_active", CategoryTreeFilter, "created_at"]
    search_fields = ["name", "slug", "skus__code"]
    list_select_related = ["category"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [SkuInline, ProductImageInline]
    readonly_fields = ["created_at", "updated_at"]
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _sku_count=Count("skus"),
                _price_min=Min("skus__price"),
                _price_max=Max("skus__price"),
            )
        )

    @admin.display(description="SKUs", ordering="_sku_count")
    def sku_count(self, product: Product) -> int:
        return product._sku_count

    @admin.display(description="Price (minor units)")
    def price_range(self, product: Product) -> str:
        if product._price_min is None:
            return "—"
        if product._price_min == product._price_max:
            return str(product._price_min)
        return f"{product._price_min}–{product._price_max}"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Runs inside the admin's transaction: the product, its SKUs and images are saved.
        services.catalog_changed(product_ids=[form.instance.pk])


@admin.register(Sku)
class SkuAdmin(CatalogWritesAdmin):
    product_id_field = "product_id"
    noun = "SKU"
    set_active = staticmethod(
        lambda ids, active: services.skus_set_active(sku_ids=ids, active=active)
    )
    list_display = ["code", "product", "price", "currency", "per_user_limit", "is_active"]
    list_filter = ["is_active", "currency"]
    search_fields = ["code", "product__name"]
    list_select_related = ["product"]
    autocomplete_fields = ["product"]

    def save_model(self, request: HttpRequest, obj: Sku, form: Any, change: bool) -> None:
        previous_product_id = form.initial.get("product") if change else None
        super().save_model(request, obj, form, change)
        services.catalog_changed(product_ids=[obj.product_id, *filter(None, [previous_product_id])])


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "parent", "slug", "position", "is_active"]
    list_filter = ["is_active", ("parent", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    list_select_related = ["parent"]

    def save_model(self, request: HttpRequest, obj: Category, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        services.categories_changed()

    def delete_model(self, request: HttpRequest, obj: Category) -> None:
        super().delete_model(request, obj)
        services.categories_changed()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        super().delete_queryset(request, queryset)
        services.categories_changed()
