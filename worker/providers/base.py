"""What every adapter exchanges with the worker: a request to send and a parsed completion (whole,
or assembled from a stream by a ``StreamParser``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.providers.sse import SSEEvent


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP request, fully built; the worker sends it and nothing else touches the network."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer as an OpenAI ``chat.completion`` dict plus the token counts that are billed."""

    response: dict[str, Any]
    prompt_tokens: int  # the whole prompt, cached parts included (OpenAI's meaning)
    completion_tokens: int  # reasoning/thinking tokens included: they are billed as output
    cached_tokens: int = 0  # prompt tokens read from a cache
    cache_write_tokens: int = 0  # prompt tokens written to a cache (Anthropic bills them apart)
    reasoning_tokens: int = 0  # the part of completion_tokens spent thinking


class StreamParser(Protocol):
    """One upstream stream being read: its events in, OpenAI ``chat.completion.chunk`` dicts out.

    ``feed`` raises the format's classified ``RouterError`` for an error event; a malformed event
    is skipped and counted (``skipped``, ``last_skipped`` says why), and ``BadResponse`` comes only
    when they do not stop, or the answer itself is broken. ``done`` turns true on the format's
    terminal event (a stream that ends without it is broken); ``started`` once a content or
    tool-call token was produced. ``completion`` (once ``done``) is the whole answer as
    ``parse_response`` gives it.
    """

    skipped: int
    last_skipped: str

    @property
    def done(self) -> bool: ...

    @property
    def started(self) -> bool: ...

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]: ...

    def completion(self) -> Completion: ...

    def partial_text(self) -> str: ...
