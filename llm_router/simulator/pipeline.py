"""The vendor-neutral path of every chat request, whatever its wire format.

auth -> validation -> model allow-list -> fault decision (latency, then at most one fault) ->
the format's answer. Every request is counted under its credential and model with the outcome
it got. With no rules and zero latency the fault step is one check and nothing sleeps.
Mid-stream faults (``cut``, ``stall``, ``stream_error``, ``malformed_event``) become a
``StreamFault`` the format's stream writer applies (or, on a plain request a rule targets with
``stream: false``, the same fault to the answer's body).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from llm_router.simulator.batches import LANES
from llm_router.simulator.faults import FaultRule
from llm_router.simulator.state import STATE, SimState
from llm_router.simulator.stream import hold, stalled_body
from llm_router.simulator.wire import ChatCall, Rejection, StreamFault, WireFormat

FLEX_UNAVAILABLE = (
    "Resource unavailable: the flex tier has no capacity right now; retry later or use the default tier"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def chat_handler(fmt: WireFormat) -> Handler:
    """An aiohttp handler running the shared pipeline for wire format ``fmt``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        raw = await request.read()
        credential: str | None = None
        try:
            credential = fmt.authenticate(request)
            call = fmt.parse(request, raw)
            if state.models is not None and call.model not in state.models:
                raise Rejection(404, model=call.model)
        except Rejection as rejection:
            state.calls.record(credential, fmt.peek_model(request, raw), str(rejection.status))
            return fmt.error(rejection)
        lanes = request.app.get(LANES)
        if lanes is not None and getattr(call.request, "service_tier", None) == "flex":
            # the flex tier: slower, and refused when it has no capacity
            delay_s, refused = lanes.flex_decision()
            if refused:
                state.calls.record(credential, call.model, "429")
                return fmt.error(Rejection(429, FLEX_UNAVAILABLE, code="resource_unavailable"))
            await asyncio.sleep(delay_s)
        decision = state.faults.decide(credential, call.model, stream=call.stream, prefill=call.prefill)
        if decision is None or decision.rule is None:
            # counted as it arrives, before any latency: a call whose client gave up while it waited
            # (a hedge's loser) was made then, and must not turn up in a count read seconds later
            state.calls.record(credential, call.model, "200")
            if decision is not None:
                await asyncio.sleep(decision.delay_s)
            return await fmt.respond(request, call)
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        rule = decision.rule
        return await _FAULTS[rule.kind](request, fmt, call, rule, state, credential)

    return handle


async def _status(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, str(rule.status))
    response = fmt.error(_rejection(rule, call, cred))
    if rule.retry_after_date is not None:
        response.headers["Retry-After"] = rule.retry_after_date
    elif rule.retry_after is not None:
        seconds = rule.retry_after
        response.headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
    return response


async def _malformed(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "200")
    return fmt.malformed(call)


async def _truncated(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "truncated")
    full = await fmt.respond(request, call)
    body = full.body if isinstance(full, web.Response) and isinstance(full.body, bytes) else b""
    if not body:  # a stream: cutting the connection is the nearest thing
        return _drop_connection(request)
    response = web.StreamResponse(status=200, headers={"Content-Type": full.headers.get("Content-Type", "")})
    response.content_length = len(body)
    try:
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
    except ConnectionError:
        pass
    _drop_connection(request)
    return response


async def _reset(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "reset")
    return _drop_connection(request)


async def _hang(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "hang")
    await hold(request, rule.hang_s)
    return _drop_connection(request)


def _rejection(rule: FaultRule, call: ChatCall, cred: str | None) -> Rejection:
    """The error a ``status`` or ``stream_error`` fault answers with (quoting the key if asked)."""
    message = (
        f"Incorrect API key provided: {cred}. You can find your API key in your account."
        if (rule.echo_key and cred)
        else None
    )
    return Rejection(rule.status, message, model=call.model, code=rule.error_code)


def _drop_connection(request: web.Request) -> web.StreamResponse:
    """Close the socket without a response; aiohttp then quietly skips sending the one returned."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


async def _content_filter(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    response = fmt.filtered(call)
    state.calls.record(cred, call.model, str(response.status))
    return response


# a fault's kind → how the stream writer spoils the stream
_STREAM_FAULT = {"cut": "cut", "stall": "stall", "stream_error": "error", "malformed_event": "malformed"}
_PREFILL_REFUSED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)


async def _mid_stream(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    if not call.stream:  # a rule aimed at plain requests (`stream: false`): the same fault, on the body
        return await _PLAIN_FAULTS[rule.kind](request, fmt, call, rule, state, cred)
    state.calls.record(cred, call.model, rule.kind)
    error = b""
    if rule.kind == "stream_error":
        error = fmt.stream_error(_rejection(rule, call, cred))
    fault = StreamFault(
        kind=_STREAM_FAULT[rule.kind],  # type: ignore[arg-type]
        after=rule.after_chunks,
        stall_s=rule.stall_s,
        close=rule.stall_then == "close",
        error=error,
    )
    return await fmt.respond(request, call, fault)


async def _stalled(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "stall")
    full = await fmt.respond(request, call)
    if not isinstance(full, web.Response):
        return full
    fault = StreamFault(kind="stall", stall_s=rule.stall_s, close=rule.stall_then == "close")
    return await stalled_body(request, full, fault)


async def _refuse_prefill(
    request: web.Request, fmt: WireFormat, call: ChatCall, rule: FaultRule, state: SimState, cred: str | None
) -> web.StreamResponse:
    state.calls.record(cred, call.model, "400")
    return fmt.error(Rejection(400, _PREFILL_REFUSED, model=call.model))


_FAULTS = {
    "status": _status,
    "malformed": _malformed,
    "truncated": _truncated,
    "reset": _reset,
    "hang": _hang,
    "content_filter": _content_filter,
    "cut": _mid_stream,
    "stall": _mid_stream,
    "stream_error": _mid_stream,
    "malformed_event": _mid_stream,
    "refuse_prefill": _refuse_prefill,
}
# mid-stream kinds on a plain answer
_PLAIN_FAULTS = {
    "cut": _truncated,
    "stall": _stalled,
    "malformed_event": _malformed,
    "stream_error": _status,
}
