"""The database router: sharded models only on shard aliases, everything else on `default`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from shop.sharding import is_sharded, is_sharded_label


class ShardNotResolved(LookupError):
    """A query on a sharded model did not say which shard it is for. Never guessed."""


class ShardRouter:
    def _db_for(self, model: type[models.Model], hints: dict[str, Any]) -> str:
        if not is_sharded(model):
            return "default"
        instance = hints.get("instance")
        db = getattr(getattr(instance, "_state", None), "db", None)
        if db in settings.ORDER_SHARD_ALIASES:
            return db
        raise ShardNotResolved(
            f"{model._meta.label} is sharded: use .using(<shard alias>) or the sharding helpers"
        )

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        return self._db_for(model, hints)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return self._db_for(model, hints)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        return obj1._state.db == obj2._state.db

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool:
        if model_name is None:
            # RunPython/RunSQL: on the shards when hinted `shards=True`, else on `default`.
            if hints.get("shards"):
                return db in settings.ORDER_SHARD_ALIASES
            return db == "default"
        if is_sharded_label(app_label, model_name):
            return db in settings.ORDER_SHARD_ALIASES
        return db == "default"
