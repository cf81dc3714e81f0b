"""Order sharding: which models live on the order shards, and where each row lives.

A model marked with :func:`sharded` lives only on the order shard aliases
(``settings.ORDER_SHARD_ALIASES``); everything else lives only on ``default``. A buyer's rows
live on the logical shard their user id hashes to; settings.ORDER_SHARD_MAP places each
logical shard on a physical alias. Ids made by :mod:`shop.sharding.ids` carry their logical
shard, so any order or payment is found from its id alone.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models

_SHARDED_MODELS: set[str] = set()


class ShardUnavailable(Exception):
    """The shard holding the requested rows cannot be reached."""


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


def logical_shard_for_user(user_id: int) -> int:
    """The logical shard of a buyer: a stable hash of the user id (never Python's hash())."""
    digest = hashlib.blake2b(str(int(user_id)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % settings.LOGICAL_SHARD_COUNT


def alias_for_logical(logical: int) -> str:
    return settings.ORDER_SHARD_MAP[logical]


def shard_for_user(user_id: int) -> str:
    """The database alias holding a buyer's orders."""
    return alias_for_logical(logical_shard_for_user(user_id))


def shard_for_id(object_id: int) -> str:
    """The database alias holding the order or payment with this id (no lookup table)."""
    from shop.sharding.ids import id_logical_shard

    return alias_for_logical(id_logical_shard(object_id))
