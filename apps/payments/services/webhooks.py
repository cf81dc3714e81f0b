"""Notifications from channels. A webhook is authenticated (HMAC-SHA256 over the timestamp and
the body, within WEBHOOK_TOLERANCE_SECONDS), recorded once by its event id, and then only
*triggers* a status query: the channel's answer to our query is what changes our records, so
a forged, replayed, reordered or unknown notification can never move money by itself."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from apps.payments.models import PaymentChannel, WebhookEvent
from apps.payments.services.coordinator import payment_settle_now
from shop.errors import ValidationFailed
from shop.parsing import ParseRefused, json_loads_bounded, parse_id, parse_int
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


def webhook_timestamp(text: str | None) -> int:
    """The X-Acquirer-Timestamp header as whole seconds since the epoch (ASCII digits, at most
    64 bits), or WebhookRejected."""
    try:
        return parse_int(text)
    except ParseRefused as exc:
        raise WebhookRejected("Missing or malformed timestamp.") from exc


def webhook_signature_matches(*, expected: str, signature: str | None) -> bool:
    """Constant-time comparison of the X-Acquirer-Signature header (compared as bytes: a
    header may hold any Latin-1 character, which ``compare_digest`` refuses on ``str``)."""
    if not signature:
        return False
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogatepass"))


def _holds_nul(value: Any) -> bool:
    """Whether any string in a parsed event holds a NUL (PostgreSQL stores none, in text or
    jsonb). The event is at most JSON_MAX_DEPTH deep, so the recursion is bounded."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _event_payment_id(event: Any) -> int | None:
    """Our payment id named by an event, if it is one: strict digits, 64-bit, on a shard of
    ours. A number or a string; anything else names no payment."""
    raw = event.get("payment_id") if isinstance(event, dict) else None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    try:
        payment_id = parse_id(raw)
    except ParseRefused:
        return None
    return payment_id if id_is_plausible(payment_id) else None


def webhook_verify(
    *,
    channel: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float | None = None,
) -> dict[str, Any]:
    """The parsed event if the notification is authentic and fresh; WebhookRejected otherwise,
    for any bytes in the headers or the body (never another exception)."""
    if not PaymentChannel.objects.filter(code=channel).exists():
        raise WebhookRejected("Unknown channel.")
    if not timestamp or not signature:
        raise WebhookRejected("Missing timestamp or signature.")
    age = abs((now or time.time()) - webhook_timestamp(timestamp))
    if age > settings.WEBHOOK_TOLERANCE_SECONDS:
        raise WebhookRejected("Stale timestamp.")
    expected = webhook_signature(
        secret=channel_webhook_secret(channel), timestamp=timestamp, body=body
    )
    if not webhook_signature_matches(expected=expected, signature=signature):
        raise WebhookRejected("Bad signature.")
    try:
        event = json_loads_bounded(body)
    except ParseRefused as exc:
        raise WebhookRejected(f"The body is not JSON ({exc}).") from exc
    if not isinstance(event, dict) or not event.get("event_id"):
        raise WebhookRejected("The event has no id.")
    if _holds_nul(event):
        raise WebhookRejected("The event holds a NUL character.")
    return event


def webhook_distrusted(*, body: bytes) -> str | None:
    """A notification that failed verification is not applied, but if it names a payment of
    ours that is still open we ask the channel about it: a real notification with a broken
    signature must not leave a payment unsettled, and a forged one only costs a query."""
    try:
        event = json_loads_bounded(body)
    except ParseRefused:
        return None
    payment_id = _event_payment_id(event)
    if payment_id is None:
        return None
    return payment_settle_now(payment_id=payment_id)


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
    payment_id = _event_payment_id(event)
    if payment_id is None:
        logger.warning(
            "webhook %s from %s names no payment of ours: %.64s",
            event["event_id"],
            channel,
            event.get("payment_id"),
        )
        return "ignored"
    return payment_settle_now(payment_id=payment_id) or "ignored"
