"""Admin helpers for sharded models: one shard at a time, chosen by a filter or decoded from
the object id being looked at or searched for."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from shop.adminkit import ReadOnlyAdmin
from shop.parsing import ParseRefused, parse_id
from shop.sharding import order_shard_aliases, shard_for_id
from shop.sharding.ids import id_is_plausible


def _plausible_id(text: str) -> int | None:
    """``text`` as an id that can be ours (strict digits, 64-bit, a logical shard we have)."""
    try:
        value = parse_id(text)
    except ParseRefused:
        return None
    return value if id_is_plausible(value) else None


def requested_alias(request: HttpRequest) -> str:
    match = request.resolver_match
    object_id = (match.kwargs.get("object_id") if match else None) or ""
    query = request.GET.get("q", "").strip()
    for candidate in (object_id, query):
        found = _plausible_id(candidate)
        if found is not None:
            return shard_for_id(found)
    shard = request.GET.get("shard")
    aliases = order_shard_aliases()
    return shard if shard in aliases else aliases[0]


class ShardFilter(admin.SimpleListFilter):
    title = "shard"
    parameter_name = "shard"

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        self.current_alias = requested_alias(request)
        super().__init__(request, *args, **kwargs)

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(alias, alias) for alias in order_shard_aliases()]

    def choices(self, changelist: Any):  # no "All": one shard at a time
        for value, label in self.lookup_choices:
            yield {
                "selected": value == self.current_alias,
                "query_string": changelist.get_query_string({self.parameter_name: value}, ["q"]),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset  # the shard is chosen in ShardedAdmin.get_queryset


class ShardedAdmin(ReadOnlyAdmin):
    """Read-only admin of a sharded model whose ids carry their shard."""

    search_fields = ["id"]
    search_help_text = "An id finds the row on whichever shard holds it."
    show_full_result_count = False
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(requested_alias(request))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        found = _plausible_id(term)
        if found is None:  # not an id of ours: nothing matches
            return queryset.none(), False
        return queryset.filter(id=found), False


class ShardedInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).using(requested_alias(request))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
