from django.db import migrations

# The degradation switches of settings.SWITCHES, off, so operators find them in the admin.
NAMES = ["widgets_off", "serve_stale", "read_only"]


def create(apps, schema_editor):
    Switch = apps.get_model("shop", "Switch")
    for name in NAMES:
        Switch.objects.using(schema_editor.connection.alias).get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("shop", "0006_runtime_config")]
    operations = [migrations.RunPython(create, migrations.RunPython.noop)]
