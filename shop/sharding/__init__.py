"""Order sharding: which models live on the order shards, and where each shard is.

A model marked with :func:`sharded` lives only on the order shard aliases
(``settings.ORDER_SHARD_ALIASES``); everything else lives only on ``default``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

_SHARDED_MODELS: set[str] = set()


def sharded(model: type[models.Model]) -> type[models.Model]:
    """Class decorator: this model's rows live on the order shards."""
    _SHARDED_MODELS.add(f"{model._meta.app_label}.{model._meta.model_name}")
    return model


def is_sharded_label(app_label: str, model_name: str) -> bool:
    return f"{app_label}.{model_name.lower()}" in _SHARDED_MODELS


def is_sharded(model: type[models.Model]) -> bool:
    return is_sharded_label(model._meta.app_label, model._meta.model_name)


def order_shard_aliases() -> list[str]:
    return list(settings.ORDER_SHARD_ALIASES)


def all_database_aliases() -> list[str]:
    return ["default", *order_shard_aliases()]
