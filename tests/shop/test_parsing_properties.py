"""Properties of the strict parsers (shop.parsing, shop.parsers, shop.idempotency): whatever
the input, a value in range or the one refusal — never another exception."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rest_framework import serializers

from shop.errors import ShopError
from shop.idempotency import form_key, validate_key
from shop.parsers import PageField, StrictIntegerField
from shop.parsing import (
    INT64_MAX,
    JSON_MAX_DEPTH,
    ParseRefused,
    is_canonical_int,
    json_loads_bounded,
    parse_amount,
    parse_id,
    parse_int,
    parse_page,
)

PROPERTY = settings(max_examples=300, deadline=None)

# Text a client could send: anything, digit-heavy text (Unicode digits included), numbers
# around the 64-bit edge written out.
digits = st.text(alphabet=st.characters(categories=["Nd", "No"]), max_size=30)
edge_numbers = st.integers(min_value=-(2**70), max_value=2**70).map(str)
any_text = st.one_of(
    st.text(), digits, edge_numbers, st.text(alphabet="0123456789-+ _", max_size=25)
)
any_value = st.one_of(
    any_text,
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(),
    st.lists(st.integers()),
)


@PROPERTY
@given(any_value)
def test_parse_int_gives_an_int_in_range_or_refuses(value):
    try:
        result = parse_int(value)
    except ParseRefused:
        return
    assert type(result) is int and 0 <= result <= INT64_MAX
    if isinstance(value, str):  # only ASCII digits got through
        assert value.isascii() and value.isdigit() and len(value) <= 19


@PROPERTY
@given(any_value, st.integers(-(2**64), 2**64), st.integers(-(2**64), 2**64))
def test_parse_int_respects_any_bounds_and_signs(value, low, high):
    low, high = min(low, high), max(low, high)
    try:
        result = parse_int(value, min_value=low, max_value=high, allow_sign=True)
    except ParseRefused:
        return
    assert low <= result <= high


@PROPERTY
@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_every_64_bit_number_round_trips(number):
    assert parse_int(str(number)) == number
    assert parse_amount(str(number)) == number
    assert is_canonical_int(str(number))
    if number:
        assert parse_id(str(number)) == number == parse_page(str(number))


@PROPERTY
@given(st.integers(min_value=-INT64_MAX, max_value=INT64_MAX))
def test_signed_numbers_round_trip_when_signs_are_allowed(number):
    assert parse_int(str(number), min_value=-INT64_MAX, allow_sign=True) == number


@PROPERTY
@given(st.integers(min_value=INT64_MAX + 1, max_value=10**40))
def test_numbers_past_64_bits_are_refused(number):
    for parse in (parse_int, parse_id, parse_amount, parse_page):
        with pytest.raises(ParseRefused):
            parse(str(number))


@PROPERTY
@given(any_value)
def test_ids_and_pages_are_positive(value):
    for parse in (parse_id, parse_page):
        with contextlib.suppress(ParseRefused):
            assert parse(value) >= 1


@PROPERTY
@given(any_text)
def test_a_canonical_number_has_one_spelling(text):
    plain = text.isascii() and text.isdigit() and len(text) <= 19
    assert is_canonical_int(text) == (plain and str(int(text)) == text and int(text) <= INT64_MAX)


# --- JSON -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@PROPERTY
@given(st.one_of(st.binary(), st.text()))
def test_json_loads_bounded_gives_a_value_or_refuses(raw):
    with contextlib.suppress(ParseRefused):
        json_loads_bounded(raw)


@PROPERTY
@given(json_values)
def test_json_documents_within_the_depth_round_trip(value):
    raw = json.dumps(value)
    if _depth(value) <= JSON_MAX_DEPTH:
        assert json_loads_bounded(raw.encode()) == value
        assert json_loads_bounded(raw) == value


@PROPERTY
@example(JSON_MAX_DEPTH, '{"a":', "[]", True)  # the inner array is the 33rd level
@example(JSON_MAX_DEPTH, "[", "1", True)
@example(JSON_MAX_DEPTH + 1, "[", "1", True)
@given(
    st.integers(min_value=0, max_value=20_000),
    st.sampled_from(["[", '{"a":']),
    st.sampled_from(["", "1", '"x"', "[]"]),
    st.booleans(),
)
def test_arbitrary_nesting_is_refused_past_the_bound_and_never_recurses(
    depth, opener, inner, closed
):
    closer = "]" if opener == "[" else "}"
    raw = opener * depth + inner + (closer * depth if closed else "")
    well_formed = (closed or depth == 0) and (inner != "" or (opener == "[" and depth > 0))
    levels = depth + (inner == "[]")
    try:
        json_loads_bounded(raw)
    except ParseRefused:
        assert levels > JSON_MAX_DEPTH or not well_formed
        return
    assert levels <= JSON_MAX_DEPTH and well_formed


@PROPERTY
@given(st.text(alphabet='[]{}"\\:,1a ', max_size=200))
def test_brackets_inside_strings_do_not_count_and_nothing_escapes(raw):
    try:
        value = json_loads_bounded(raw)
    except ParseRefused:
        return
    assert _depth(value) <= JSON_MAX_DEPTH


@PROPERTY
@given(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "[1e400]"]))
def test_values_json_does_not_have_are_refused(raw):
    with pytest.raises(ParseRefused):
        json_loads_bounded(raw)


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_are_kept(number):
    assert json_loads_bounded(json.dumps(number)) == number
    assert math.isfinite(json_loads_bounded(json.dumps([number]))[0])


# --- Idempotency keys, DRF fields --------------------------------------------------------------


@PROPERTY
@given(st.one_of(st.text(), st.none(), st.text(alphabet=st.characters(max_codepoint=0xFF))))
def test_an_idempotency_key_is_accepted_as_is_or_refused_with_a_400(raw):
    try:
        key = validate_key(raw)
    except ShopError as exc:
        assert exc.http_status == 400
        assert exc.code in ("idempotency_key_required", "validation_error")
        return
    assert key == raw and 1 <= len(key) <= 255 and all(" " <= ch <= "~" for ch in key)


@PROPERTY
@given(st.one_of(st.text(), st.none()))
def test_a_form_key_is_always_a_storable_key(raw):
    key = form_key(raw)
    assert 1 <= len(key) <= 200 and all(" " <= ch <= "~" for ch in key)
    assert validate_key(key) == key


@PROPERTY
@given(any_value)
def test_strict_integer_fields_validate_or_refuse(value):
    field = StrictIntegerField(min_value=1, max_value=100)
    try:
        result = field.run_validation(value)
    except serializers.ValidationError:
        return
    assert 1 <= result <= 100


@PROPERTY
@given(st.one_of(any_text, st.just("")))
def test_the_page_parameter_is_a_page_number_or_a_validation_error(value):
    try:
        page = PageField().run_validation(value)
    except serializers.ValidationError:
        with pytest.raises(ParseRefused):
            parse_page(value)
        return
    assert 1 <= page <= INT64_MAX
    assert page == parse_page(value)
