"""A job's stream relayed as another API's SSE events (the Responses and Messages fronts).

The front's translator (``producer.responses_answer.ResponseEvents``,
``producer.messages_answer.MessageEvents``) turns chunks into events; this module only moves them:
``event: <type>`` + ``data: <json>`` per event, as both APIs send them. The HTTP response starts
with the first event that has something to say, so a job that fails before any token answers with
its error status (the front's error shape, like the chat front's streams); a failure after that is
the translator's failure event, and the stream ends.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from llm_router.contract import JobRecord
from llm_router.errors import RouterError, WaitTimeout
from producer.http.ended import follow_stream
from producer.http.errors import record_error, sse_data, start_sse
from producer.http.interactive import Started, wait_answer
from producer.producer import JobFailed, Producer


class Translator(Protocol):
    """What a front's stream translator answers with: lists of event objects (each with its
    ``type``), its opening events before the first of them."""

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]: ...

    def finish(self, record: JobRecord) -> list[dict[str, Any]]: ...

    def fail(self, error: RouterError, record: JobRecord | None = None) -> list[dict[str, Any]]: ...


def sse_events(events: list[dict[str, Any]], skip_through: int | None = None) -> bytes:
    """Events as SSE, each named by its type; with ``skip_through``, only those whose
    ``sequence_number`` comes after it (a client resuming a stream)."""
    return b"".join(
        sse_data(e, event=e["type"])
        for e in events
        if skip_through is None or e.get("sequence_number", skip_through + 1) > skip_through
    )


async def relay_events(
    request: web.Request,
    started: Started,
    translator: Translator,
    headers: dict[str, str],
    *,
    skip_through: int | None = None,
) -> web.StreamResponse:
    """Relay ``started``'s job as ``translator``'s events; raises the job's error while nothing was
    sent (the caller's error middleware answers it in the front's shape)."""
    producer: Producer = request.app["producer"]
    response: web.StreamResponse | None = None

    async def send(events: list[dict[str, Any]]) -> None:
        nonlocal response
        if response is None:
            response = await start_sse(request, headers)
        await response.write(sse_events(events, skip_through))

    try:
        async for chunk in follow_stream(
            producer, started.job_id, tenant=started.tenant, timeout_s=started.wait_s
        ):
            events = translator.chunk(chunk)
            if events:
                await send(events)
        record = await wait_answer(request, started)
        await send(translator.finish(record))
    except (JobFailed, WaitTimeout, RouterError) as exc:
        error = record_error(exc.record.error) if isinstance(exc, JobFailed) else exc
        if response is None:
            raise error from None
        failed = exc.record if isinstance(exc, JobFailed) else None
        await response.write(sse_events(translator.fail(error, failed), skip_through))
    assert response is not None
    await response.write_eof()
    return response
