"""Log in by any spelling of a username: trimmed, NFKC-normalised, in any case.

Usernames are unique in that canonical form (registration checks it, a unique index on
``lower(username)`` enforces it), so a spelling names at most one account, and the login
throttle (``shop.throttle``) counts attempts under the same form this backend looks users up by.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest

from apps.users.selectors import user_by_username

User = get_user_model()


class CanonicalUsernameBackend(ModelBackend):
    """ModelBackend with the user found by :func:`apps.users.selectors.user_by_username`
    instead of an exact match. Like ModelBackend, an unknown name still costs one password
    hash, so the answer's timing does not tell which names exist."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if username is None or password is None:
            return None
        user = user_by_username(username=str(username))
        if user is None:
            User().set_password(password)  # the hasher runs once, as for a known user
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None

    async def aauthenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AbstractBaseUser | None:
        return await sync_to_async(self.authenticate)(
            request, username=username, password=password, **kwargs
        )
