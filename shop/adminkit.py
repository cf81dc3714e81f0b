"""Admin building blocks shared by the apps (the kernel never imports apps)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the shop writes itself (ledgers, logs, runs, de-duplication state): operators read
    them and act through the admin's actions, never by editing a row."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def admin_view_requiring(
    admin_site: admin.AdminSite, view: Callable[..., HttpResponse], permission: str
) -> Callable[..., HttpResponse]:
    """A custom admin page (``get_urls``) for staff holding ``permission``: the admin's own
    login check first, then 403 for staff without it. Staff status alone grants nothing: a
    support role sees only what its permissions name."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.has_perm(permission):
            raise PermissionDenied(f"This page needs the {permission} permission.")
        return view(request, *args, **kwargs)

    return admin_site.admin_view(guarded)
