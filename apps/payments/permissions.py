"""Who may move money back: operators, i.e. active staff holding ``payments.refund_payment``
(superusers hold every permission). Give a support role this one permission through a group
(Admin → Groups → "payments | refund | Can refund payments"), not the whole admin."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

REFUND_PERMISSION = "payments.refund_payment"


def user_may_refund(user: Any) -> bool:
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(REFUND_PERMISSION)
    )


class RefundOperatorOnly(BasePermission):
    """DRF permission: checked before the view runs, so a refused caller learns nothing about
    the order and leaves nothing behind (not even an idempotency record)."""

    message = "Only the shop's operators may refund payments."

    def has_permission(self, request: Any, view: Any) -> bool:
        return user_may_refund(request.user)
