"""Shared test fixtures: a fixed clock; a missing real component fails under CI."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from iotrust.ports import FixedClock

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def missing_component(what: str) -> None:
    """Skip locally, but fail under CI=true: a green CI must never hide a missing install step."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} not available")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)
