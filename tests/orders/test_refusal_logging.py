"""A sold-out answer is counted, not logged as a warning; a real client error still is."""

from __future__ import annotations

import logging

import pytest

from config.settings import base
from shop.logs import ExpectedRefusalFilter
from tests.orders.conftest import api_client, post_order

pytestmark = pytest.mark.django_db(databases="__all__")


def _request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "django.request"]


def test_django_request_warnings_pass_through_the_expected_refusal_filter():
    assert "expected_refusals" in base.LOGGING["loggers"]["django.request"]["filters"]
    configured = base.LOGGING["filters"]["expected_refusals"]["()"]
    assert configured == f"{ExpectedRefusalFilter.__module__}.ExpectedRefusalFilter"


def test_a_sold_out_409_is_dropped_and_a_404_is_kept(caplog, buyer, sku):
    client = api_client(buyer)
    assert post_order(client, [{"sku": sku.code, "quantity": 10}]).status_code == 201
    with caplog.at_level(logging.WARNING, logger="django.request"):
        sold_out = post_order(client, [{"sku": sku.code, "quantity": 1}])
        missing = client.get("/api/v1/orders/123456789/")
    assert sold_out.status_code == 409 and sold_out.json()["code"] == "out_of_stock"
    assert missing.status_code == 404
    records = {r.status_code: r for r in _request_records(caplog)}
    assert set(records) == {409, 404}  # Django logs both ...
    keep = ExpectedRefusalFilter()
    assert not keep.filter(records[409])  # ... the filter drops the sold-out answer
    assert keep.filter(records[404])
