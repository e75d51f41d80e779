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
    prompt_tokens: int  # the whole prompt, cached parts included (OpenAI's meaning)
    completion_tokens: int  # reasoning/thinking tokens included: they are billed as output
    cached_tokens: int = 0  # prompt tokens read from a cache
    cache_write_tokens: int = 0  # prompt tokens written to a cache (Anthropic bills them apart)
    reasoning_tokens: int = 0  # the part of completion_tokens spent thinking


class Adapter(Protocol):
    """A wire format: pure translation between our request and the provider's HTTP exchange.

    A module may also set ``NEEDS_IMAGE_BYTES = True`` when its provider cannot fetch image URLs
    itself: the worker then inlines https images as data URIs before ``build_request``.
    """

    def build_request(self, request: dict[str, Any], deployment: Deployment) -> HttpCall: ...

    def parse_response(
        self, status: int, headers: dict[str, str], body: bytes, request: dict[str, Any]
    ) -> Completion: ...
