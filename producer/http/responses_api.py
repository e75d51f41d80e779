"""The Responses API front: ``POST /v1/responses``, ``GET /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel``.

A response is a chat job (``producer.responses_format`` translates the body; the record renders
back through ``producer.responses_answer``) whose id is ``resp_…``: the id of the Response is the
job's, so ``GET`` reads the record. Without ``background`` it runs on the interactive queue like a
chat completion (``start_interactive``: ``Idempotency-Key``, credits, end notification); with
``background: true`` it is submitted to the bulk queue like a ``/v1/jobs`` job and answered at once
(``status: queued``), to be polled, streamed (``GET …?stream=true``, resumable with
``starting_after``) or cancelled by id. ``previous_response_id`` names an earlier response of the
same tenant: its record's conversation is the new job's history. Errors are OpenAI's shape (the
app's error middleware), with the Responses names of the fields.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from config.settings import Settings
from llm_router.contract import JobRecord, JobStatus
from llm_router.errors import (
    InvalidRequest,
    JobNotCancellable,
    JobNotEnded,
    JobNotFound,
    ResourceNotFound,
    RouterError,
    WaitTimeout,
)
from producer.http.ended import EndedWaiter
from producer.http.errors import JOB_ID_HEADER, idempotency_key, json_response, read_json, start_sse
from producer.http.front_stream import relay_events, sse_events
from producer.http.interactive import WAIT_SLACK_S, Started, start_interactive, wait_answer
from producer.http.jobs_api import owned_record, submit_jobs
from producer.producer import Producer
from producer.responses_answer import ResponseEvents, input_items, response_object
from producer.responses_format import (
    RESPONSE_PREFIX,
    conversation_of,
    input_of,
    responses_param,
    responses_to_chat,
)

routes = web.RouteTableDef()
CANCEL_WAIT_S = 5.0  # a running job is aborted by its worker: how long cancel waits to show it ended


@contextlib.contextmanager
def responses_names() -> Iterator[None]:
    """Errors about the chat job name the Responses fields the client sent."""
    try:
        yield
    except RouterError as exc:
        if exc.param:
            exc.param = responses_param(exc.param)
        raise


async def _history(request: web.Request, previous_id: Any) -> list[dict[str, Any]]:
    if not isinstance(previous_id, str) or not previous_id:
        raise InvalidRequest("previous_response_id must be a response id", param="previous_response_id")
    producer: Producer = request.app["producer"]
    try:
        record = await producer.get(previous_id, tenant=request["tenant"])
    except JobNotFound:
        raise ResourceNotFound(
            f"Previous response with id '{previous_id}' not found.", param="previous_response_id"
        ) from None
    if record.status != JobStatus.SUCCEEDED:
        raise InvalidRequest(
            f"Previous response with id '{previous_id}' is {response_object(record)['status']}: only a "
            "completed response can be continued",
            param="previous_response_id",
        )
    return conversation_of(record.request, record.response)


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    settings: Settings = request.app["settings"]
    body = await read_json(request, settings.server_max_body_bytes)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    with responses_names():
        history = None
        if body.get("previous_response_id") is not None:
            history = await _history(request, body["previous_response_id"])
        job = responses_to_chat(body, history=history)
        if body.get("background") is True:
            return await _background(request, job)
        async with start_interactive(request, job, id_prefix=RESPONSE_PREFIX) as started:
            headers = {JOB_ID_HEADER: started.job_id}
            if job.get("stream") is True:
                record = await request.app["producer"].get(started.job_id, tenant=started.tenant)
                return await relay_events(request, started, ResponseEvents(record), headers)
            record = await wait_answer(request, started)
    return json_response(response_object(record), headers=headers)


async def _background(request: web.Request, job: dict[str, Any]) -> web.StreamResponse:
    """A queued job on the bulk queue, answered as it is now (or streamed as it goes)."""
    settings: Settings = request.app["settings"]
    producer: Producer = request.app["producer"]
    waiter: EndedWaiter = request.app["ended"]
    tenant: str = request["tenant"]
    job_id = RESPONSE_PREFIX + (idempotency_key(request) or os.urandom(16).hex())
    with waiter.watch(producer.scoped(job_id, tenant)) as ended:
        result = (await submit_jobs(producer, settings, [{**job, "job_id": job_id}], tenant))[0]
        if isinstance(result, RouterError):
            raise result
        record = await producer.get(job_id, tenant=tenant)
        headers = {JOB_ID_HEADER: job_id}
        if job.get("stream") is True:
            started = Started(job_id, _wait_s(record), ended, tenant)
            return await relay_events(request, started, ResponseEvents(record), headers)
    return json_response(response_object(record), headers=headers)


def _wait_s(record: JobRecord) -> float:
    return max(record.deadline_at - time.time(), 0.0) + WAIT_SLACK_S


@routes.get("/v1/responses/{id}")
async def get_response(request: web.Request) -> web.StreamResponse:
    """The response as its record is now; ``?stream=true`` replays its events from the start (after
    ``starting_after``, a sequence number) and follows it to its end."""
    response_id = request.match_info["id"]
    record = await owned_record(request, response_id)
    if request.query.get("stream", "").lower() != "true":
        return json_response(response_object(record))
    skip = request.query.get("starting_after")
    if skip is not None and not skip.lstrip("-").isdigit():
        raise InvalidRequest("starting_after must be an integer", param="starting_after")
    skip_through = int(skip) if skip is not None else None
    headers = {JOB_ID_HEADER: response_id}
    if record.status == JobStatus.SUCCEEDED and not record.request.get("stream"):
        # a job that did not stream has no chunks to follow: its events come from the record alone
        response = await start_sse(request, headers)
        await response.write(sse_events(ResponseEvents(record).finish(record), skip_through))
        await response.write_eof()
        return response
    producer: Producer = request.app["producer"]
    waiter: EndedWaiter = request.app["ended"]
    with waiter.watch(producer.scoped(response_id, request["tenant"])) as ended:
        started = Started(response_id, _wait_s(record), ended, request["tenant"])
        return await relay_events(
            request, started, ResponseEvents(record), headers, skip_through=skip_through
        )


MAX_ITEMS_PAGE = 100


@routes.get("/v1/responses/{id}/input_items")
async def list_input_items(request: web.Request) -> web.Response:
    """The response's own input as items (``client.responses.input_items.list``): newest first unless
    ``order=asc``, ``limit`` (1-100, 20) a page, ``after`` an item id."""
    response_id = request.match_info["id"]
    record = await owned_record(request, response_id)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    raw_limit = request.query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_ITEMS_PAGE:
        raise InvalidRequest(f"limit must be an integer from 1 to {MAX_ITEMS_PAGE}", param="limit")
    items = input_items(response_id, input_of(record.request))
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"no input item '{after}' in response '{response_id}'", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[: int(raw_limit)]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


@routes.delete("/v1/responses/{id}")
async def delete_response(request: web.Request) -> web.Response:
    """Delete a response that has ended (``client.responses.delete``): its record, request and stream;
    it answers 404 from then on. One still queued or running is a 409: cancel it first."""
    response_id = request.match_info["id"]
    await owned_record(request, response_id)  # 404 for another tenant's, like an unknown id
    producer: Producer = request.app["producer"]
    why = await producer.store.delete_ended(producer.scoped(response_id, request["tenant"]))
    if why == "not_found":
        raise ResourceNotFound(f"No response found with id '{response_id}'.", param="id")
    if why is not None:
        raise JobNotEnded(f"response '{response_id}' is {why}; cancel it before deleting it", param="id")
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@routes.post("/v1/responses/{id}/cancel")
async def cancel_response(request: web.Request) -> web.Response:
    """Cancel: a queued response ends ``cancelled`` at once; a running one is aborted, and the answer
    waits a moment for it to end. A response that ended otherwise cannot be cancelled (409)."""
    response_id = request.match_info["id"]
    tenant: str = request["tenant"]
    record = await owned_record(request, response_id)
    if record.status == JobStatus.CANCELLED:
        return json_response(response_object(record))
    producer: Producer = request.app["producer"]
    waiter: EndedWaiter = request.app["ended"]
    scoped = producer.scoped(response_id, tenant)
    with waiter.watch(scoped) as ended:
        try:
            record = await producer.cancel(response_id, tenant=tenant)
        except JobNotCancellable:
            record = await producer.get(response_id, tenant=tenant)
            if record.status != JobStatus.CANCELLED:
                raise JobNotCancellable(
                    f"response '{response_id}' is {response_object(record)['status']}; it cannot be "
                    "cancelled",
                    param="id",
                ) from None
        if not record.status.terminal:
            with contextlib.suppress(WaitTimeout):
                record = await waiter.wait(scoped, ended, CANCEL_WAIT_S)
    return json_response(response_object(record))
