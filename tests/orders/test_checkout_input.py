"""The checkout's early read of its items (apps.orders.api._items_as_validated) is the input
serializer's judgment, taken without the serializer: whatever the body, it either declines
(the serializer then judges) or gives exactly the items the serializer would validate."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from apps.orders.api import OrderCreateApi, _items_as_validated

PROPERTY = settings(max_examples=400, deadline=None)

codes = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["SKU-1", " SKU-1", "SKU-1\n", "", "A" * 64, "A" * 65, "a\x00b", "\ud800x"]),
)
quantities = st.one_of(
    st.integers(min_value=-2, max_value=1_000),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.none(),
)
item = st.one_of(
    st.fixed_dictionaries({"sku": codes, "quantity": quantities}),
    st.fixed_dictionaries(
        {"sku": codes, "quantity": quantities}, optional={"extra": st.integers()}
    ),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(),
)
bodies = st.one_of(
    st.fixed_dictionaries({"items": st.lists(item, max_size=25)}),
    st.fixed_dictionaries({"items": st.one_of(item, st.none(), st.text(max_size=3))}),
    st.lists(item, max_size=2),
    st.none(),
)


@PROPERTY
@given(bodies)
@example({"items": [{"sku": "SKU-1", "quantity": 2}]})
@example({"items": [{"sku": " SKU-1 ", "quantity": 2}]})
@example({"items": [{"sku": "SKU-1", "quantity": True}]})
@example({"items": [{"sku": "SKU-1", "quantity": 2, "note": "gift"}]})
def test_the_early_read_is_the_serializers_judgment(body):
    early = _items_as_validated(body)
    serializer = OrderCreateApi.InputSerializer(data=body)
    if early is None:
        return  # the serializer judges it, as before
    assert serializer.is_valid(), serializer.errors
    assert [dict(i) for i in serializer.validated_data["items"]] == early


def test_the_early_read_takes_the_common_body_and_declines_what_needs_trimming():
    assert _items_as_validated({"items": [{"sku": "SKU-1", "quantity": 2}]}) == [
        {"sku": "SKU-1", "quantity": 2}
    ]
    assert _items_as_validated({"items": [{"sku": " SKU-1", "quantity": 2}]}) is None
    assert _items_as_validated({"items": [{"sku": "SKU-1", "quantity": 2, "x": 1}]}) is None
