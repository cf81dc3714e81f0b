from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


@register()
def dead_letter_delay_fits_the_broker(**kwargs: Any) -> list[Error]:
    """A countdown longer than the broker's consumer timeout gets the channel closed and the
    message redelivered over and over; refuse such a configuration at start."""
    if settings.DEAD_LETTER_RETRY_DELAY >= settings.BROKER_CONSUMER_TIMEOUT:
        return [
            Error(
                "DEAD_LETTER_RETRY_DELAY must be shorter than BROKER_CONSUMER_TIMEOUT.",
                hint="RabbitMQ closes channels holding an unacked message longer than that.",
                id="orders.E001",
            )
        ]
    return []
