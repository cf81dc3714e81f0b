"""A sandbox acquirer: several simulated banks ("channels") behind one HTTP server.

Run it with ``python manage.py run_sandbox_acquirer`` (or ``python -m
apps.payments.sandbox.acquirer``); see :mod:`apps.payments.sandbox.acquirer` for the API.
This package imports nothing from Django, so it runs without the shop's settings or databases.
"""
