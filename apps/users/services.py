from __future__ import annotations

from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from rest_framework.authtoken.models import Token

from apps.users.exceptions import USERNAME_TAKEN, InvalidCredentials, RegistrationInvalid
from apps.users.selectors import username_taken
from shop.authentication import token_revoke_users, username_normalize

User = get_user_model()


@transaction.atomic(using="default")
def user_register(*, username: str, password: str, email: str = "") -> tuple[AbstractBaseUser, str]:
    """Create a buyer account and its API token. Invalid input raises and writes nothing.

    The name is stored trimmed and NFKC-normalised, and refused when an account has it in any
    case or width: checked here, and enforced by the unique index on ``lower(username)`` (a
    concurrent twin that passed the check loses at the insert, with the same field error)."""
    username = username_normalize(username)
    errors: dict[str, list[str]] = {}
    username_field = User._meta.get_field("username")
    try:
        username_field.run_validators(username)
        if not username:
            raise ValidationError("This field may not be blank.")
    except ValidationError as exc:
        errors["username"] = list(exc.messages)
    if "username" not in errors and username_taken(username=username):
        errors["username"] = [USERNAME_TAKEN]
    if email:
        try:
            validate_email(email)
        except ValidationError as exc:
            errors["email"] = list(exc.messages)
    try:
        validate_password(password, User(username=username, email=email))
    except ValidationError as exc:
        errors["password"] = list(exc.messages)
    if errors:
        raise RegistrationInvalid(extra={"fields": errors})
    try:
        user = User.objects.create_user(username=username, email=email, password=password)
    except IntegrityError as exc:  # a concurrent registration took the name (or its twin)
        raise RegistrationInvalid(extra={"fields": {"username": [USERNAME_TAKEN]}}) from exc
    token = Token.objects.create(user=user)
    return user, token.key


@transaction.atomic(using="default")
def user_token_obtain(*, username: str, password: str) -> str:
    """The API token of the user with these credentials (created on first use)."""
    user = authenticate(username=username, password=password)
    if user is None or not user.is_active:
        raise InvalidCredentials()
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


@transaction.atomic(using="default")
def user_ensure(
    *, username: str, email: str, password_hash: str, staff: bool = False, reset_password: bool
) -> tuple[AbstractBaseUser, bool]:
    """Create the user if missing, with ``password_hash`` (from ``make_password``, so seeding
    many accounts hashes once). An existing user keeps its password unless ``reset_password``.
    Staff users are superusers. Returns (user, created)."""
    user = User.objects.filter(username=username).first()
    created = user is None
    if user is None:
        user = User(username=username, email=email)
    if created or reset_password:
        user.password = password_hash
    user.is_staff = user.is_superuser = staff
    user.save()
    return user, created


@transaction.atomic(using="default")
def users_deactivate(*, user_ids: list[int]) -> int:
    """Deactivate these users and delete their API tokens, in one transaction; every process
    forgets their cached tokens once it commits. Returns how many were active. Idempotent."""
    count = User.objects.filter(id__in=user_ids, is_active=True).update(is_active=False)
    Token.objects.filter(user_id__in=user_ids).delete()
    token_revoke_users(user_ids=user_ids)  # update() sends no signal
    return count
