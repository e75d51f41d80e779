"""The suite's guard holds: this process cannot reach past the loopback, nor look a name up."""

from __future__ import annotations

import socket

import pytest


def test_the_guard_refuses_the_internet(no_internet: list[str]) -> None:
    before = len(no_internet)
    with pytest.raises(OSError):
        socket.create_connection(("93.184.216.34", 80), timeout=1)
    with pytest.raises(OSError):
        socket.getaddrinfo("raw.githubusercontent.com", 443)
    assert len(no_internet) == before + 2
    del no_internet[before:]  # seen and refused: not a client's attempt
