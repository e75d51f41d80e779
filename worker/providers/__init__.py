"""Provider adapters, one module per wire format, looked up by the catalog's ``format``.

Each format is a request/answer module plus a stream module; an ``Adapter`` puts the pure functions
of both in one table so the worker never asks which format it is talking to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.catalog import Deployment
from llm_router.errors import RouterError
from worker.providers import anthropic, anthropic_stream, gemini, gemini_stream, openai
from worker.providers.base import Completion, HttpCall, StreamParser


@dataclass(frozen=True, slots=True)
class Adapter:
    """A wire format: pure translation between our request and the provider's HTTP exchange."""

    build_request: Callable[[dict[str, Any], Deployment], HttpCall]
    # (status, headers, body, request): the answer, or the classified error raised
    parse_response: Callable[[int, dict[str, str], bytes, dict[str, Any]], Completion]
    classify_error: Callable[[int, dict[str, str], bytes], RouterError]
    build_stream_request: Callable[[dict[str, Any], Deployment], HttpCall]
    stream_parser: Callable[[dict[str, Any], Deployment], StreamParser]
    # the provider cannot fetch image URLs (a request module's ``NEEDS_IMAGE_BYTES``): the worker
    # inlines https images as data URIs before ``build_request``
    needs_image_bytes: bool = False


def _adapter(requests: Any, streams: Any) -> Adapter:
    return Adapter(
        build_request=requests.build_request,
        parse_response=requests.parse_response,
        classify_error=requests.classify_error,
        build_stream_request=requests.build_stream_request,
        stream_parser=streams.stream_parser,
        needs_image_bytes=getattr(requests, "NEEDS_IMAGE_BYTES", False),
    )


ADAPTERS: dict[str, Adapter] = {
    "openai": _adapter(openai, openai),
    "anthropic": _adapter(anthropic, anthropic_stream),
    "gemini": _adapter(gemini, gemini_stream),
}

__all__ = ["ADAPTERS", "Adapter", "Completion", "HttpCall"]
