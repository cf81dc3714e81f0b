"""Fixtures of the chaos scenarios: a report printed whatever pytest's capture mode."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> Callable:
    """``report(line)`` prints past pytest's capture, so a CI log shows what held."""

    def write(line: str) -> None:
        with capsys.disabled():
            print(f"[chaos {request.node.name}] {line}", flush=True)

    return write
