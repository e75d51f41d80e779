"""Call counters: how many chat requests each (credential, model) made and what each got."""

from __future__ import annotations

from collections import Counter
from typing import Any


class CallLog:
    """Counts every chat request by credential and model, keyed by outcome.

    The outcome is the HTTP status as a string ("200", "429", ...), or "reset"/"hang" for
    requests that got no response at all, or the mid-stream fault a stream got ("cut", "stall",
    "stream_error"). A malformed body still went out as a 200.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[str | None, str | None], Counter[str]] = {}

    def record(self, credential: str | None, model: str | None, outcome: str) -> None:
        key = (credential, model)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = Counter()
        counter[outcome] += 1

    def clear(self) -> None:
        self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """``{"total": N, "calls": [{"credential", "model", "count", "statuses"}]}``."""
        calls = [
            {
                "credential": credential,
                "model": model,
                "count": sum(counter.values()),
                "statuses": dict(counter),
            }
            for (credential, model), counter in self._counts.items()
        ]
        return {"total": sum(c["count"] for c in calls), "calls": calls}
