"""Operators' breaker switches tell the truth about how far they reached."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages

from apps.payments.models import PaymentChannel
from shop.resilience import breakers_local_reset
from tests.factories.users import UserFactory
from tests.shop.test_cache_redis_down import DEAD_REDIS

pytestmark = pytest.mark.django_db(databases="__all__")

URL = "/admin/payments/paymentchannel/"


@pytest.fixture
def operator(client, channels):
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    yield client
    breakers_local_reset()


def _force_open(client):
    alpha = PaymentChannel.objects.get(code="alpha")
    response = client.post(URL, {"action": "force_open", "_selected_action": [alpha.pk]})
    assert response.status_code == 302
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def test_forcing_a_breaker_open_says_so(operator):
    assert _force_open(operator) == [("warning", "Breaker(s) forced open.")]


def test_with_redis_down_forcing_a_breaker_says_it_reached_this_process_only(operator, settings):
    settings.CACHES = DEAD_REDIS
    ((level, text),) = _force_open(operator)
    assert level == "error" and "this web process only" in text
