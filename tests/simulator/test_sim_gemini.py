"""The simulator's Gemini generateContent format: the official ``google-genai`` client against it,
strict validation in Google's wording, its error bodies, faults by credential and model, thinking
and implicit caching.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from llm_router.simulator import FaultRule, SimServer
from llm_router.simulator.tokens import count_text_tokens

KEY = "gemini-sim-test-key"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
MEETING = types.FunctionDeclaration(
    name="schedule_meeting",
    description="Schedules a meeting with specified attendees at a given time and date.",
    parameters=types.Schema(
        type="OBJECT",
        properties={
            "attendees": types.Schema(type="ARRAY", items=types.Schema(type="STRING")),
            "topic": types.Schema(type="STRING"),
        },
        required=["attendees", "topic"],
    ),
)


def client(sim: SimServer, key: str = KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=sim.url))


async def generate(sim: SimServer, key: str = KEY, **kwargs: Any) -> types.GenerateContentResponse:
    """The sync client call, off the event loop that runs the in-process simulator."""
    kwargs.setdefault("model", "gemini-2.5-flash")

    def call() -> types.GenerateContentResponse:
        with client(sim, key) as c:  # a client closes its connections when collected: hold it
            return c.models.generate_content(**kwargs)

    return await asyncio.to_thread(call)


async def post(
    http: aiohttp.ClientSession,
    sim: SimServer,
    body: Any,
    *,
    model: str = "gemini-2.5-flash",
    key: str | None = KEY,
) -> tuple[int, Any]:
    headers = {"x-goog-api-key": key} if key else {}
    url = f"{sim.url}/v1beta/models/{model}:generateContent"
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_sdk_generate_content_with_system_instruction_and_config(sim: SimServer) -> None:
    config = types.GenerateContentConfig(
        system_instruction="You are a cat.", temperature=0.3, max_output_tokens=400
    )
    first = await generate(sim, contents="Hello there", config=config)
    again = await generate(sim, contents="Hello there", config=config)
    assert first.text and first.text == again.text
    assert first.candidates[0].finish_reason == types.FinishReason.STOP
    usage = first.usage_metadata
    # the documented rule: 3 priming + (4 + text) for the system instruction + (4 + text) per turn
    assert usage.prompt_token_count == 3 + 4 + count_text_tokens("You are a cat.") + 4 + count_text_tokens(
        "Hello there"
    )
    assert usage.candidates_token_count == count_text_tokens(first.text)
    assert usage.thoughts_token_count is None and usage.cached_content_token_count is None
    assert sim.calls()["calls"] == [
        {"credential": KEY, "model": "gemini-2.5-flash", "count": 2, "statuses": {"200": 2}}
    ]


async def test_sdk_function_calling_round_trip(sim: SimServer) -> None:
    tools = [types.Tool(function_declarations=[MEETING])]
    ask = types.Content(
        role="user", parts=[types.Part.from_text(text="Schedule a meeting about Q3 planning.")]
    )
    first = await generate(sim, contents=[ask], config=types.GenerateContentConfig(tools=tools))
    (call,) = first.function_calls
    assert call.name == "schedule_meeting" and isinstance(call.args["attendees"], list)
    reply = types.Part.from_function_response(name="schedule_meeting", response={"status": "scheduled"})
    follow = [ask, first.candidates[0].content, types.Content(role="user", parts=[reply])]
    second = await generate(sim, contents=follow, config=types.GenerateContentConfig(tools=tools))
    assert second.function_calls is None and second.text


async def test_sdk_image_bytes_thinking_and_candidates(sim: SimServer) -> None:
    config = types.GenerateContentConfig(
        candidate_count=2, thinking_config=types.ThinkingConfig(thinking_budget=1024, include_thoughts=True)
    )
    contents = [types.Part.from_bytes(data=PNG, mime_type="image/png"), "Caption this image."]
    answer = await generate(sim, contents=contents, config=config)
    assert len(answer.candidates) == 2
    thoughts = [c.content.parts[0] for c in answer.candidates]
    assert all(t.thought is True for t in thoughts)
    usage = answer.usage_metadata
    assert usage.thoughts_token_count == sum(count_text_tokens(t.text) for t in thoughts)
    assert usage.prompt_token_count == 3 + 4 + 765 + count_text_tokens("Caption this image.")


async def test_sdk_json_schema_answer(sim: SimServer) -> None:
    config = types.GenerateContentConfig(
        response_mime_type="application/json",
        response_schema=types.Schema(
            type="OBJECT", properties={"name": types.Schema(type="STRING")}, required=["name"]
        ),
    )
    answer = await generate(sim, contents="A cookie recipe", config=config)
    assert isinstance(orjson.loads(answer.text)["name"], str)


async def test_implicit_caching_reports_cached_prefix_tokens(sim: SimServer) -> None:
    long_turn = types.Content(role="user", parts=[types.Part.from_text(text="context " * 700)])
    ack = types.Content(role="model", parts=[types.Part.from_text(text="ok")])
    first = await generate(sim, contents=[long_turn, ack, "question one"])
    second = await generate(sim, contents=[long_turn, ack, "question two"])
    prefix = 3 + 4 + count_text_tokens("context " * 700) + 4 + count_text_tokens("ok")
    assert first.usage_metadata.cached_content_token_count is None
    assert second.usage_metadata.cached_content_token_count == prefix


async def test_injected_faults_by_credential_and_model_take_googles_shape(sim: SimServer) -> None:
    sim.add_faults(
        [
            FaultRule(credential="k-busy", model="gemini-2.5-pro", kind="status", status=503),
            FaultRule(credential="k-slow", kind="status", status=429),
        ]
    )
    with pytest.raises(genai_errors.ServerError) as busy:
        await generate(sim, key="k-busy", model="gemini-2.5-pro", contents="hi")
    assert (busy.value.code, busy.value.status) == (503, "UNAVAILABLE")
    assert (await generate(sim, key="k-busy", model="gemini-2.5-flash", contents="hi")).text
    with pytest.raises(genai_errors.ClientError) as limited:
        await generate(sim, key="k-slow", contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "1s"


async def test_content_filter_fault_blocks_the_prompt(sim: SimServer) -> None:
    sim.add_faults([FaultRule(kind="content_filter")])
    answer = await generate(sim, contents="hi")
    assert answer.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    assert not answer.candidates


async def test_key_by_header_or_query_and_403_without(sim: SimServer, http: aiohttp.ClientSession) -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    status, data = await post(http, sim, body, key=None)
    assert (status, data["error"]["status"]) == (403, "PERMISSION_DENIED")
    async with http.post(
        f"{sim.url}/v1beta/models/gemini-2.5-flash:generateContent?key=q-key", json=body
    ) as resp:
        assert resp.status == 200
    assert {c["credential"] for c in sim.calls()["calls"]} == {None, "q-key"}


def _turns(*roles_and_parts: tuple[str, list[dict]]) -> list[dict]:
    return [{"role": r, "parts": p} for r, p in roles_and_parts]


CALL = {"functionCall": {"name": "f", "args": {}}}
RESPONSE = {"functionResponse": {"name": "f", "response": {"ok": True}}}
# (body, status string, message): Google's wording
INVALID = [
    ({"contents": []}, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n"),
    (
        {"contents": [{"parts": [{"text": "hi"}]}], "model": "gemini-2.5-flash"},
        "INVALID_ARGUMENT",
        'Invalid JSON payload received. Unknown name "model": Cannot find field.',
    ),
    (
        {"contents": [{"parts": [{"text": "hi", "mime": "x"}]}]},
        "INVALID_ARGUMENT",
        "Invalid JSON payload received. Unknown name \"mime\" at 'contents[0].parts[0]': Cannot find field.",
    ),
    (
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"temperature": "hot"}},
        "INVALID_ARGUMENT",
        "Invalid value at 'generation_config.temperature' (TYPE_FLOAT), \"hot\"",
    ),
    (
        {"contents": [{"role": "assistant", "parts": [{"text": "hi"}]}]},
        "INVALID_ARGUMENT",
        "Please use a valid role: user, model.",
    ),
    (
        {"contents": [{"parts": [{}]}]},
        "INVALID_ARGUMENT",
        "* GenerateContentRequest.contents[0].parts[0].data: required oneof field 'data' must have one "
        "initialized field\n",
    ),
    (
        {"contents": _turns(("user", [{"text": "x"}]), ("user", [RESPONSE]))},
        "INVALID_ARGUMENT",
        "Please ensure that function response turn comes immediately after a function call turn.",
    ),
    (
        {"contents": _turns(("user", [{"text": "x"}]), ("model", [CALL, CALL]), ("user", [RESPONSE]))},
        "INVALID_ARGUMENT",
        "Please ensure that the number of function response parts is equal to the number of function "
        "call parts of the function call turn.",
    ),
    (
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"stopSequences": list("abcdef")}},
        "INVALID_ARGUMENT",
        "* GenerateContentRequest.generation_config.stop_sequences: stop_sequences must have at most "
        "5 entries\n",
    ),
    (
        {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "***"}}]}]},
        "INVALID_ARGUMENT",
        "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), "
        'Base64 decoding failed for "***"',
    ),
]


@pytest.mark.parametrize(("body", "state", "message"), INVALID)
async def test_strict_validation_answers_400_in_googles_shape(
    sim: SimServer, http: aiohttp.ClientSession, body: dict, state: str, message: str
) -> None:
    status, data = await post(http, sim, body)
    assert status == 400
    assert (data["error"]["code"], data["error"]["status"], data["error"]["message"]) == (400, state, message)


async def test_snake_case_proto_names_are_accepted(sim: SimServer, http: aiohttp.ClientSession) -> None:
    # ai.google.dev's REST samples spell fields as proto names
    body = {
        "system_instruction": {"parts": [{"text": "You are a cat. Your name is Neko."}]},
        "contents": [
            {"parts": [{"inline_data": {"mime_type": "image/png", "data": base64.b64encode(PNG).decode()}}]}
        ],
        "generation_config": {"max_output_tokens": 5, "stop_sequences": ["Title"]},
    }
    status, data = await post(http, sim, body)
    assert status == 200, data
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    types.GenerateContentResponse.model_validate(data)
