"""FlashSale now belongs to the flashsales app (same table): forget it here, in state only."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("inventory", "0004_flashsale_limit_is_the_skus"),
        ("flashsales", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="FlashSale")],
            database_operations=[],
        ),
    ]
