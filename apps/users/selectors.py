from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import QuerySet, Value
from django.db.models.functions import Lower

from shop.authentication import username_canonical, username_normalize

User = get_user_model()


def _same_name_ignoring_case(name: str) -> QuerySet:
    """Accounts whose name is ``name`` in the database's case rules: ``lower(username) =
    lower(name)`` — the unique index's own expression, so the lookup uses that index (where
    ``iexact``, ``UPPER(...)`` on PostgreSQL, would scan the table) and agrees with it exactly."""
    return User.objects.alias(folded=Lower("username")).filter(folded=Lower(Value(name)))


def username_taken(*, username: str, exclude_pk: int | None = None) -> bool:
    """Whether another account already has this name in another case or width (compared
    after trimming and NFKC-normalising, case-insensitively in the database)."""
    others = _same_name_ignoring_case(username_normalize(username))
    if exclude_pk is not None:
        others = others.exclude(pk=exclude_pk)
    return others.exists()


def user_by_username(*, username: str) -> AbstractBaseUser | None:
    """The account this spelling of a name logs in to: the one whose canonical username
    (``shop.authentication.username_canonical``) is this one's; None if there is none.

    The database narrows by its case-insensitive match (one account at most, with the unique
    index), then the canonical form decides, so a name the database's case rules fold further
    than ``casefold`` does never logs in to a different-looking account. Were several to match,
    the exact spelling would win and otherwise none: never a guess."""
    normalized = username_normalize(username)
    if not normalized:
        return None
    canonical = username_canonical(username)
    candidates = [
        user
        for user in _same_name_ignoring_case(normalized)
        if username_canonical(user.get_username()) == canonical
    ]
    if len(candidates) == 1:
        return candidates[0]
    return next((user for user in candidates if user.get_username() == normalized), None)
