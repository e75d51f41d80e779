"""What every provider batch format shares: the state of a remote batch, one item of its answer as
the format gives it, and that item as the router sees it (an answer, a classified error, or "not
run"). Pure: no I/O; the batcher's edge (``worker.batch_api``) does the HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_router.errors import RouterError
from worker.providers import Adapter
from worker.providers.base import Completion

# a remote batch's state, in the router's words (each format maps its own onto these)
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
EXPIRED = "expired"
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Remote:
    """A provider batch as last read: its id, its state, and where its answers are."""

    id: str
    state: str
    cancelling: bool = False
    output: str | None = None  # OpenAI's output file id, Anthropic's results URL; Gemini's are inline
    errors: str | None = None  # OpenAI's error file id
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ended(self) -> bool:
        return self.state != RUNNING


@dataclass(frozen=True, slots=True)
class RawItem:
    """One request's outcome as the batch reported it: ``succeeded`` with the body a synchronous call
    would have answered, ``errored`` with the status and error body a synchronous call would have
    got, or ``expired`` / ``canceled`` (never run)."""

    key: str  # the item's key in its batch (OpenAI and Anthropic: custom_id; Gemini: its position)
    outcome: str
    status: int = 200
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item as the router sees it: an answer, or why the job goes back to `now`."""

    completion: Completion | None = None
    error: RouterError | None = None
    outcome: str = "succeeded"

    @property
    def why(self) -> str:
        if self.error is not None:
            return f"the batch answered it with an error ({self.error.code})"
        if self.outcome == "expired":
            return "the provider batch expired before it ran"
        return "the provider batch was cancelled before it ran"


def to_result(item: RawItem, request: dict[str, Any], adapter: Adapter) -> ItemResult:
    """``item`` through the deployment's own adapter: its answer parsed exactly as a synchronous
    answer is, its error classified by the same table (so a batch item fails like a call)."""
    if item.outcome == "succeeded":
        try:
            return ItemResult(completion=adapter.parse_response(200, {}, item.body, request))
        except RouterError as exc:
            return ItemResult(error=exc, outcome="errored")
    if item.outcome == "errored":
        return ItemResult(error=adapter.classify_error(item.status, {}, item.body), outcome="errored")
    return ItemResult(outcome=item.outcome)
