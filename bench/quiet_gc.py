"""The measuring client's garbage collector, kept out of what it measures.

A benchmark client is a Python process too. Under `http_latency.py`'s load (200 requests/s, 1,000
in flight) its own full collections took 65-108 ms and its young ones 5-20 ms, every few seconds
(timed with ``gc.callbacks``, 2026-12-04): each one added itself to every request in flight at that
moment, on whichever path was being measured then, and made the p99 of the path that drew it.
Measured phases run with the collector off; it runs between them, when nothing is in flight.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_off() -> Iterator[None]:
    """Collect now, freeze what survives (never walked again) and keep the collector off inside."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
