"""Provider adapters, one module per wire format, looked up by the catalog's ``format``.

Each format is a request/answer module plus a stream module; ``WireFormat`` puts the pure functions
of both in one table so the worker never asks which format it is talking to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.providers import anthropic, anthropic_stream, gemini, gemini_stream, openai
from worker.providers.base import Adapter, Completion, HttpCall


@dataclass(frozen=True, slots=True)
class WireFormat:
    """The pure translation functions of one wire format (see ``base.Adapter``)."""

    build_request: Callable[..., HttpCall]
    parse_response: Callable[..., Completion]
    classify_error: Callable[..., Any]
    build_stream_request: Callable[..., HttpCall]
    stream_parser: Callable[..., Any]
    # the provider cannot fetch image URLs: the worker inlines https images as data URIs first
    needs_image_bytes: bool = False


def _format(requests: Any, streams: Any) -> WireFormat:
    return WireFormat(
        build_request=requests.build_request,
        parse_response=requests.parse_response,
        classify_error=requests.classify_error,
        build_stream_request=requests.build_stream_request,
        stream_parser=streams.stream_parser,
        needs_image_bytes=getattr(requests, "NEEDS_IMAGE_BYTES", False),
    )


ADAPTERS: dict[str, WireFormat] = {
    "openai": _format(openai, openai),
    "anthropic": _format(anthropic, anthropic_stream),
    "gemini": _format(gemini, gemini_stream),
}

__all__ = ["ADAPTERS", "Adapter", "Completion", "HttpCall", "WireFormat"]
