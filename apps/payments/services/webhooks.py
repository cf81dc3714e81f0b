"""Notifications from channels. A webhook is authenticated (HMAC-SHA256 over the timestamp and
the body, within WEBHOOK_TOLERANCE_SECONDS), recorded once by its event id, and then only
*triggers* a status query: the channel's answer to our query is what changes our records, so
a forged, replayed, reordered or unknown notification can never move money by itself."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.payments.models import PaymentChannel, WebhookEvent
from apps.payments.services.coordinator import payment_settle_now
from shop.errors import ValidationFailed
from shop.sharding.ids import id_is_plausible

logger = logging.getLogger(__name__)


class WebhookRejected(ValidationFailed):
    code = "webhook_rejected"
    default_message = "The notification could not be verified."


def channel_webhook_secret(code: str) -> str:
    return f"{settings.ACQUIRER_WEBHOOK_SECRET}-{code}"


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def webhook_verify(
    *,
    channel: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float | None = None,
) -> dict[str, Any]:
    """The parsed event if the notification is authentic and fresh; WebhookRejected otherwise."""
    if not PaymentChannel.objects.filter(code=channel).exists():
        raise WebhookRejected("Unknown channel.")
    if not timestamp or not signature or not timestamp.isdigit():
        raise WebhookRejected("Missing timestamp or signature.")
    age = abs((now or time.time()) - int(timestamp))
    if age > settings.WEBHOOK_TOLERANCE_SECONDS:
        raise WebhookRejected("Stale timestamp.")
    expected = webhook_signature(
        secret=channel_webhook_secret(channel), timestamp=timestamp, body=body
    )
    if not hmac.compare_digest(expected, signature):
        raise WebhookRejected("Bad signature.")
    try:
        event = json.loads(body)
    except ValueError as exc:
        raise WebhookRejected("The body is not JSON.") from exc
    if not isinstance(event, dict) or not event.get("event_id"):
        raise WebhookRejected("The event has no id.")
    return event


def webhook_distrusted(*, body: bytes) -> str | None:
    """A notification that failed verification is not applied, but if it names a payment of
    ours that is still open we ask the channel about it: a real notification with a broken
    signature must not leave a payment unsettled, and a forged one only costs a query."""
    try:
        raw_id = str(json.loads(body).get("payment_id", ""))
    except (ValueError, AttributeError):
        return None
    if not raw_id.isdigit() or not id_is_plausible(int(raw_id)):
        return None
    return payment_settle_now(payment_id=int(raw_id))


def webhook_receive(*, channel: str, event: dict[str, Any]) -> str:
    """Record a verified event once and settle its payment from the channel's own answer.
    Returns "duplicate", "ignored" (no payment of ours) or the payment's TCC status."""
    try:
        with transaction.atomic(using="default"):
            WebhookEvent.objects.create(
                channel=channel,
                event_id=str(event["event_id"])[:100],
                event_type=str(event.get("type", ""))[:60],
                payment_id=str(event.get("payment_id", ""))[:64],
                payload=event,
            )
    except IntegrityError:
        return "duplicate"
    raw_id = str(event.get("payment_id", ""))
    if not raw_id.isdigit() or not id_is_plausible(int(raw_id)):
        logger.warning(
            "webhook %s from %s names no payment of ours: %s", event["event_id"], channel, raw_id
        )
        return "ignored"
    return payment_settle_now(payment_id=int(raw_id)) or "ignored"
