from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser

from shop.authentication import username_canonical, username_normalize

User = get_user_model()


def username_taken(*, username: str, exclude_pk: int | None = None) -> bool:
    """Whether another account already has this name in another case or width (compared
    after trimming and NFKC-normalising, case-insensitively in the database)."""
    others = User.objects.filter(username__iexact=username_normalize(username))
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    return others.exists()


def user_by_username(*, username: str) -> AbstractBaseUser | None:
    """The account this spelling of a name logs in to: the one whose canonical username
    (``shop.authentication.username_canonical``) is this one's; None if there is none.

    The database narrows by case-insensitive match, then the canonical form decides, so the
    answer never depends on the database's case rules alone. Should several accounts share the
    form (only possible where the unique index cannot fold the case, e.g. non-ASCII letters on
    SQLite), the exact spelling wins and otherwise none does: never a guess."""
    normalized = username_normalize(username)
    if not normalized:
        return None
    canonical = username_canonical(username)
    candidates = [
        user
        for user in User.objects.filter(username__iexact=normalized)
        if username_canonical(user.get_username()) == canonical
    ]
    if len(candidates) == 1:
        return candidates[0]
    return next((user for user in candidates if user.get_username() == normalized), None)
