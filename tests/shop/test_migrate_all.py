from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connections

from shop.sharding import all_database_aliases


@pytest.mark.django_db(databases="__all__")
def test_every_alias_is_migrated_and_tables_live_only_where_they_belong(capsys):
    call_command("migrate_all")
    out = capsys.readouterr().out
    for alias in all_database_aliases():
        assert f"Migrating {alias}" in out
    default_tables = set(connections["default"].introspection.table_names())
    assert {"catalog_product", "inventory_stock", "auth_user"} <= default_tables
    for alias in all_database_aliases()[1:]:
        shard_tables = set(connections[alias].introspection.table_names())
        assert "django_migrations" in shard_tables
        assert not shard_tables & {"catalog_product", "inventory_stock", "auth_user"}
