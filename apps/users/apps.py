from django.apps import AppConfig


class UsersConfig(AppConfig):
    """Buyer and operator accounts: registration, login, API tokens (Django's User model)."""

    name = "apps.users"
    label = "users"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_init, post_save
        from rest_framework.authtoken.models import Token

        from shop import authentication as auth

        # Signals, against the conventions' rule, because this is cache invalidation, not
        # business flow: whatever path deletes a token or deactivates a user (the admin, the
        # shell, a service), every process must forget the cached token (shop.authentication).
        # QuerySet.update() sends none: such code calls auth.token_revoke_users itself.
        user_model = get_user_model()
        post_delete.connect(
            auth.token_revoked_on_token_delete, sender=Token, dispatch_uid="token-revoked-token"
        )
        post_init.connect(
            auth.token_snapshot_on_user_init, sender=user_model, dispatch_uid="token-user-init"
        )
        post_save.connect(
            auth.token_revoked_on_user_save, sender=user_model, dispatch_uid="token-user-save"
        )
        post_delete.connect(
            auth.token_revoked_on_user_delete, sender=user_model, dispatch_uid="token-user-delete"
        )
