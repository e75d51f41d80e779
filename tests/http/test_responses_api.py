"""The Responses API front over HTTP, through the ``openai`` SDK: what the compatibility suite does not
show (idempotency, tenants, refusals, background jobs on a server whose queues nobody serves, failures
before and after tokens, resuming a stream), each answer checked by the SDK's own types."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest
import requests
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from producer.http.openapi import SCHEMAS, contract_schemas
from producer.http.openapi_fronts import schemas as front_schemas

EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def _tenant() -> str:
    return f"resp-{uuid.uuid4().hex[:8]}"


def test_idempotency_key_names_the_response_and_a_retry_runs_nothing_new(api: Any) -> None:
    sdk = api.openai(_tenant())
    key = uuid.uuid4().hex
    first = sdk.responses.create(model="gpt-4o-mini", input="Say hi.", extra_headers={"Idempotency-Key": key})
    again = sdk.responses.create(model="gpt-4o-mini", input="Say hi.", extra_headers={"Idempotency-Key": key})
    assert first.id == again.id == f"resp_{key}" and again.output_text == first.output_text
    background = sdk.responses.create(
        model="gpt-4o-mini", input="Say hi.", background=True, extra_headers={"Idempotency-Key": key + "b"}
    )
    repeat = sdk.responses.create(
        model="gpt-4o-mini", input="Say hi.", background=True, extra_headers={"Idempotency-Key": key + "b"}
    )
    assert background.id == repeat.id == f"resp_{key}b"
    with pytest.raises(openai.ConflictError) as conflict:  # the same key for another request
        sdk.responses.create(model="gpt-4o-mini", input="Other.", extra_headers={"Idempotency-Key": key})
    assert conflict.value.body["code"] == "idempotency_conflict"  # type: ignore[index]


def test_another_tenants_response_is_one_this_tenant_does_not_have(api: Any) -> None:
    mine, theirs = api.openai(_tenant()), api.openai(_tenant())
    answer = mine.responses.create(model="gpt-4o-mini", input="Say hi.")
    assert mine.responses.retrieve(answer.id).output_text == answer.output_text
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(answer.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.cancel(answer.id)
    with pytest.raises(openai.NotFoundError) as chained:
        theirs.responses.create(model="gpt-4o-mini", input="And?", previous_response_id=answer.id)
    assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_output_tokens": 10_000_000}, "max_output_tokens"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"temperature": 7}, "temperature"),
        (
            {
                "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                "stream": 3,
            },
            "stream",
        ),
        ({"extra_body": {"conversation": "conv_1"}}, "conversation"),
    ],
)
def test_refusals_name_the_field_the_client_sent(api: Any, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api.openai("acme").responses.create(model="gpt-4o-mini", input="hi", **fields)
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_unknown_model_and_no_workers(api: Any, idle_api: Any) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        api.openai("acme").responses.create(model="no-such-model", input="hi")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as idle:
        idle_api.openai(_tenant()).responses.create(model="gpt-4o-mini", input="hi")
    assert idle.value.status_code == 503


def test_background_response_waits_in_the_queue_until_cancelled(idle_api: Any) -> None:
    sdk = idle_api.openai(_tenant())
    queued = sdk.responses.create(model="claude-haiku-4-5", input="Write a long story.", background=True)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    assert sdk.responses.retrieve(queued.id).status == "queued"
    cancelled = sdk.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.error is None
    assert sdk.responses.cancel(queued.id).status == "cancelled"  # cancelling again changes nothing
    assert sdk.responses.retrieve(queued.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as chained:
        sdk.responses.create(
            model="claude-haiku-4-5", input="And?", previous_response_id=queued.id, background=True
        )
    assert chained.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_input_items_list_a_responses_own_input_and_delete_removes_it(api: Any) -> None:
    tenant = _tenant()
    sdk = api.openai(tenant)
    first = sdk.responses.create(model="gpt-4o-mini", instructions="Be terse.", input="Weather in Oslo?")
    second = sdk.responses.create(
        model="gpt-4o-mini",
        previous_response_id=first.id,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "And in Rome?"}]},
            {"role": "user", "content": "Answer in one line."},
        ],
    )
    # the SDK's own types read every item; only the second response's input, newest first by default
    items = list(sdk.responses.input_items.list(second.id))
    texts = [item.content[0].text for item in items]
    assert texts == ["Answer in one line.", "And in Rome?"]
    assert all(item.type == "message" and item.role == "user" for item in items)
    asc = sdk.responses.input_items.list(second.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["And in Rome?"] and asc.has_more
    rest = sdk.responses.input_items.list(second.id, order="asc", after=asc.data[0].id)
    assert [i.content[0].text for i in rest.data] == ["Answer in one line."] and not rest.has_more
    assert [i.content[0].text for i in sdk.responses.input_items.list(first.id)] == ["Weather in Oslo?"]
    # another tenant sees none of it
    with pytest.raises(openai.NotFoundError):
        api.openai(_tenant()).responses.input_items.list(second.id)
    with pytest.raises(openai.NotFoundError):
        api.openai(_tenant()).responses.delete(second.id)
    # deleted: gone for its tenant too; the response chained to it before is not touched
    assert sdk.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(first.id)
    assert sdk.responses.retrieve(second.id).status == "completed"


def test_a_response_that_has_not_ended_cannot_be_deleted(idle_api: Any) -> None:
    sdk = idle_api.openai(_tenant())
    queued = sdk.responses.create(model="claude-haiku-4-5", input="Write a long story.", background=True)
    with pytest.raises(openai.ConflictError) as conflict:
        sdk.responses.delete(queued.id)
    assert conflict.value.body["code"] == "job_not_ended"  # type: ignore[index]
    sdk.responses.cancel(queued.id)
    assert sdk.responses.delete(queued.id) is None


def test_a_finished_response_can_be_streamed_again_from_any_point(api: Any) -> None:
    tenant = _tenant()
    sdk = api.openai(tenant)
    done = sdk.responses.create(model="gemini-2.5-flash", input="Say hi.", tools=[WEATHER])
    url = f"{api.url}/v1/responses/{done.id}"
    headers = api.headers(tenant)
    events = _events(requests.get(url, params={"stream": "true"}, headers=headers, timeout=30))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    completed = EVENT.validate_python(events[-1])
    assert completed.type == "response.completed"
    assert completed.response.model_dump() == sdk.responses.retrieve(done.id).model_dump()
    tail = _events(
        requests.get(url, params={"stream": "true", "starting_after": "3"}, headers=headers, timeout=30)
    )
    assert tail == events[4:]


def _events(response: requests.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n", 1)
        event = EVENT.validate_json(data.removeprefix("data: "))
        assert name == f"event: {event.type}"
        out.append(event.model_dump(mode="json", exclude_unset=True))
    return out


async def test_a_stream_that_fails_before_a_token_answers_with_its_status(api: Any, sim: Any) -> None:
    await sim.faults(
        {"model": "grok-3", "kind": "status", "status": 401},
        {"model": "x-ai/grok-3", "kind": "status", "status": 403},
    )
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await api.async_openai("acme").responses.create(
                model="grok-3", input="hi", stream=True, extra_body={"fallbacks": []}
            )
    finally:
        await sim.faults()
    assert info.value.status_code == 502 and info.value.body["code"] == "auth_failed"  # type: ignore[index]


async def test_a_stream_broken_after_tokens_ends_with_response_failed(api: Any, sim: Any) -> None:
    await sim.faults({"model": "gpt-4o-mini", "kind": "cut", "after_chunks": 3})
    try:
        stream = await api.async_openai("acme").responses.create(
            model="gpt-4o-mini", input="hi", max_output_tokens=64, stream=True, extra_body={"fallbacks": []}
        )
        events = [event async for event in stream]
    finally:
        await sim.faults()
    assert any(e.type == "response.output_text.delta" for e in events)
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    assert failed.response.error.type == "stream_interrupted"
    stored = await api.async_openai("acme").responses.retrieve(failed.response.id)
    assert Response.model_validate(stored.model_dump()).status == "failed"


async def test_a_background_stream_cut_after_tokens_goes_on_without_repeating_them(
    api: Any, sim: Any
) -> None:
    """A background Response's stream is relayed to its creator as it is written: cut after tokens,
    it is continued (on the next deployment, or another model) rather than started over, which sent
    the client the partial answer and then the whole answer again."""
    # four chunks, quiet long enough for the relay to have sent them on, then the connection drops
    cut = {"model": "gpt-4o-mini", "kind": "stall", "after_chunks": 4, "stall_s": 0.5, "stall_then": "close"}
    await sim.faults({**cut, "count": 1})
    try:
        stream = await api.async_openai("acme").responses.create(
            model="gpt-4o-mini",
            input="Tell me a story about a lighthouse keeper and a cat.",
            max_output_tokens=120,
            stream=True,
            background=True,
        )
        events = [event async for event in stream]
    finally:
        await sim.faults()
    completed = events[-1]
    assert completed.type == "response.completed", [e.type for e in events][-3:]
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == completed.response.output_text


def test_the_fronts_schemas_do_not_shadow_the_contracts() -> None:
    contract = contract_schemas()
    fronts = front_schemas(contract["ChatRequest"]["properties"])
    assert not set(fronts) & set(contract)
    assert all(SCHEMAS[name] == schema for name, schema in fronts.items())
