"""What every adapter exchanges with the worker: a request to send and a parsed completion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from config.catalog import Deployment


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
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


class Adapter(Protocol):
    """A wire format: pure translation between our request and the provider's HTTP exchange."""

    def build_request(self, request: dict[str, Any], deployment: Deployment) -> HttpCall: ...

    def parse_response(
        self, status: int, headers: dict[str, str], body: bytes, request: dict[str, Any]
    ) -> Completion: ...
