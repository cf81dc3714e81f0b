from __future__ import annotations

from django.db import models


class PendingInvalidation(models.Model):
    """A cache group whose invalidation could not reach the cache; retried periodically.

    Without it an edit made while Redis was unreachable would be served stale for a whole TTL
    once Redis came back.
    """

    group = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.group
