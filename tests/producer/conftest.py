"""The fronts' translators are tested offline: no Redis, no simulator."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def fresh_breakers() -> None:
    """Nothing to reset: these tests never reach Redis (the root conftest's would start a redis-server
    and scan it before every test)."""
