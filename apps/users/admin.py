"""Django's user admin, with usernames unique in any case or width (as registration has them).

The stock forms compare names exactly (the change form) or only after the add form's own
normalisation; the unique index on ``lower(username)`` would then turn a twin into a 500. These
forms refuse a twin as a field error instead.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse

from apps.users.exceptions import USERNAME_TAKEN
from apps.users.selectors import username_taken

User = get_user_model()


def _clean_username(form: Any, *, exclude_pk: int | None) -> str:
    username = form.cleaned_data.get("username")
    if username and username_taken(username=username, exclude_pk=exclude_pk):
        raise ValidationError(USERNAME_TAKEN, code="unique")
    return username


class UserAddForm(AdminUserCreationForm):
    def clean_username(self) -> str:
        return _clean_username(self, exclude_pk=None)


class UserEditForm(UserChangeForm):
    def clean_username(self) -> str:
        return _clean_username(self, exclude_pk=self.instance.pk)


admin.site.unregister(User)


@admin.register(User)
class ShopUserAdmin(UserAdmin):
    add_form = UserAddForm
    form = UserEditForm

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except IntegrityError:
            # Another save took the name (or a twin of it) between the form's check and this
            # insert. Everything of this attempt was rolled back; validating again shows the
            # operator the field error (anything else fails again, as before).
            return super().changeform_view(request, object_id, form_url, extra_context)
