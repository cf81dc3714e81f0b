"""FlashSale moves from the inventory app to this one. Its table stays ``inventory_flashsale``:
only Django's state moves (no data is copied), and the content type is relabelled so the
permissions already granted on flash sales keep working."""

import django.db.models.deletion
from django.db import migrations, models


def content_type_move(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label="flashsales", model="flashsale").exists():
        ContentType.objects.using(db).filter(app_label="inventory", model="flashsale").update(
            app_label="flashsales"
        )


def content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    if not ContentType.objects.using(db).filter(app_label="inventory", model="flashsale").exists():
        ContentType.objects.using(db).filter(app_label="flashsales", model="flashsale").update(
            app_label="inventory"
        )


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("catalog", "0002_sku_per_user_limit"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("inventory", "0004_flashsale_limit_is_the_skus"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="FlashSale",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("units", models.PositiveIntegerField(help_text="Units put on sale when it started.")),
                        ("active", models.BooleanField(default=True)),
                        ("started_at", models.DateTimeField(auto_now_add=True)),
                        ("ended_at", models.DateTimeField(blank=True, null=True)),
                        ("sku", models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name="+", to="catalog.sku")),
                    ],
                    options={"db_table": "inventory_flashsale", "ordering": ["-started_at"]},
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_type_move, content_type_back, elidable=False),
    ]
