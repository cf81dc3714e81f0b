"""Usernames unique ignoring case, in the database: a unique index on ``lower(username)`` of
Django's own user table.

Why raw SQL: the project uses the stock ``auth.User``, whose model (and migrations) belong to
Django. A constraint or index on it cannot be declared from this app — ``AddIndex`` and
``AddConstraint`` only act on this app's own models, and a proxy model cannot carry indexes —
so the index is created with ``RunSQL`` (with its reverse). ``lower()`` on an expression index
works on SQLite (3.9+) and PostgreSQL alike. Django's migration state does not know the index,
which is right: it changes no model, and ``makemigrations`` has nothing to detect.

Names reach the table NFKC-normalised (``create_user`` and the forms normalise), so with this
index ``Ｂｕｙｅｒ`` ("Buyer" once normalised) cannot sit next to ``buyer``, whatever path
created either, and of two concurrent registrations of twins the second insert fails
(``apps.users.services.user_register`` answers it as "already exists").

PostgreSQL folds the case of every letter (per the database's ctype). SQLite's ``lower()``
and ``LIKE`` fold ASCII letters only, so on the embedded (development) profile ``Émile`` and
``émile`` can both register; production runs on PostgreSQL only.

Creating the index fails if twins exist already; the first step lists them, so an operator can
rename one of each pair and migrate again.
"""

from django.db import migrations
from django.db.models import Count
from django.db.models.functions import Lower

INDEX = "users_auth_user_username_lower_uniq"


def refuse_existing_twins(apps, schema_editor):
    User = apps.get_model("auth", "User")
    twins = (
        User.objects.using(schema_editor.connection.alias)
        .annotate(folded=Lower("username"))
        .values("folded")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("folded", flat=True)
    )
    found = list(twins[:20])
    if found:
        raise RuntimeError(
            "Usernames that differ only in case exist; rename one of each before migrating: "
            + ", ".join(sorted(found))
        )


class Migration(migrations.Migration):
    initial = True

    dependencies = [("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.RunPython(refuse_existing_twins, migrations.RunPython.noop, elidable=True),
        migrations.RunSQL(
            sql=f"CREATE UNIQUE INDEX {INDEX} ON auth_user (lower(username));",
            reverse_sql=f"DROP INDEX {INDEX};",
        ),
    ]
