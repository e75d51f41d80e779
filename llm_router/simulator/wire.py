"""The seam between the vendor-neutral request pipeline and one vendor wire format.

A format module (``openai_format``, ``anthropic_format`` for ``/v1/messages``, ``gemini_format``
for ``models/{m}:generateContent``) supplies a ``WireFormat``: where the credential lives, how
a request is validated, how the vendor shapes errors and answers. ``pipeline`` owns everything
vendor-neutral - auth presence, the model allow-list, call counting, latency and faults - and
``app`` mounts one route per format. Adding a format is a new module plus one route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import web


class Rejection(Exception):
    """A request the vendor would refuse; the format renders it in its own error shape.

    ``message=None`` asks the format for its canned message for ``status`` (used by injected
    faults); ``model`` fills in messages that name the model (e.g. 404 model_not_found).
    """

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.model = model


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated chat request: what the pipeline needs plus the format's own parsed form."""

    model: str
    stream: bool
    request: Any
    prefill: bool = False  # the request ends with a partial answer to continue (an assistant prefill)


@dataclass(frozen=True, slots=True)
class StreamFault:
    """How to spoil a stream once ``after`` events went out intact: ``cut`` the connection,
    ``stall`` for ``stall_s`` seconds (then the rest, or with ``close`` a closed connection), send
    ``error`` (one encoded event in the format's shape) and end there, or send one ``malformed``
    event (JSON cut short) and then the rest of the stream intact."""

    kind: Literal["cut", "stall", "error", "malformed"]
    after: int = 0
    stall_s: float = 0.0
    close: bool = False
    error: bytes = b""


class WireFormat(Protocol):
    """One vendor's wire format for chat requests."""

    def authenticate(self, request: web.Request) -> str:
        """The request's credential; raises ``Rejection(401, ...)`` when there is none."""
        ...

    def peek_model(self, request: web.Request, raw: bytes) -> str | None:
        """Best-effort model of a request that failed auth or validation, for call counting."""
        ...

    def parse(self, request: web.Request, raw: bytes) -> ChatCall:
        """Validate strictly, as the vendor would; raises ``Rejection`` for a bad request."""
        ...

    def error(self, rejection: Rejection) -> web.Response:
        """The vendor's error response for ``rejection``."""
        ...

    def malformed(self, call: ChatCall) -> web.Response:
        """A 200 whose JSON body is cut short."""
        ...

    def filtered(self, call: ChatCall) -> web.Response:
        """The vendor's answer when its safety system withholds one (a ``content_filter`` fault)."""
        ...

    def stream_error(self, rejection: Rejection) -> bytes:
        """The vendor's error event in a stream (encoded, ``\n\n`` included) for ``rejection``."""
        ...

    async def respond(
        self, request: web.Request, call: ChatCall, fault: StreamFault | None = None
    ) -> web.StreamResponse:
        """The successful answer (JSON, or an event stream when ``call.stream``)."""
        ...
