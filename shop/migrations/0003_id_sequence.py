from django.db import migrations

from shop.sharding.ids import SEQUENCE_NAME


def create_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE_NAME} CYCLE")


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP SEQUENCE IF EXISTS {SEQUENCE_NAME}")


class Migration(migrations.Migration):
    dependencies = [("shop", "0002_orders_kernel")]

    operations = [
        # The id sequence of each order shard (see shop.sharding.ids); SQLite uses a table.
        migrations.RunPython(create_sequence, drop_sequence, hints={"shards": True}),
    ]
