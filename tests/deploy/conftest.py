"""The deploy recipes are checked offline: no Redis, no simulator, no network."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fresh_breakers() -> None:
    """Replaces the suite's autouse fixture of that name, which would start a redis-server for nothing."""
