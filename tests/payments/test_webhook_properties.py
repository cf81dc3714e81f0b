"""Properties of webhook verification: whatever the headers and the body, the event or
WebhookRejected — never another exception (docs/input-limits.md)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.payments.services.webhooks import (
    WebhookRejected,
    channel_webhook_secret,
    webhook_signature,
    webhook_signature_matches,
    webhook_timestamp,
    webhook_verify,
)
from shop.parsing import INT64_MAX

PROPERTY = settings(max_examples=200, deadline=None)
# Header values arrive as Latin-1 text (WSGI); anything else a client library might send too.
header_text = st.one_of(
    st.none(),
    st.text(),
    st.text(alphabet=st.characters(max_codepoint=0xFF)),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), max_size=25),
)


@PROPERTY
@given(header_text)
def test_a_timestamp_header_is_whole_seconds_or_rejected(text):
    try:
        seconds = webhook_timestamp(text)
    except WebhookRejected as exc:
        assert exc.http_status == 400 and exc.code == "webhook_rejected"
        return
    assert 0 <= seconds <= INT64_MAX
    assert text.isascii() and text.isdigit()


@PROPERTY
@given(header_text, st.binary(max_size=64))
def test_a_signature_header_matches_only_the_expected_one(signature, body):
    expected = webhook_signature(secret="s", timestamp="1", body=body)
    assert webhook_signature_matches(expected=expected, signature=signature) is (
        signature == expected
    )
    assert webhook_signature_matches(expected=expected, signature=expected)


bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.sampled_from(["event_id", "payment_id", "type", "x"]), children)
        ),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=0, max_value=3000).map(lambda n: ("[" * n + "]" * n).encode()),
)


@pytest.mark.django_db
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(timestamp=header_text, signature=header_text, body=bodies, sign=st.booleans())
def test_verification_gives_an_event_or_rejects_whatever_the_input(
    channels, timestamp, signature, body, sign
):
    now = time.time()
    if sign and timestamp is not None:  # a genuine signature over whatever was sent
        signature = webhook_signature(
            secret=channel_webhook_secret("alpha"), timestamp=timestamp, body=body
        )
    try:
        event = webhook_verify(
            channel="alpha", timestamp=timestamp, signature=signature, body=body, now=now
        )
    except WebhookRejected:
        return
    assert isinstance(event, dict) and event.get("event_id")
    assert abs(now - int(timestamp)) <= 300
