"""The Anthropic Messages front over HTTP, through the ``anthropic`` SDK: auth both ways, Anthropic's
error shape and status codes for every refusal (before and after a route is found), idempotency,
fields other vendors lack, and failures before and after tokens."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import pytest
import requests
from anthropic.types import Message
from anthropic.types.shared import ErrorResponse

from tests.http.conftest import SERVER_MAX_BODY_BYTES

HI = [{"role": "user", "content": "Say hi."}]


def client(api: Any, tenant: str = "acme", **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=api.url, api_key=api.key_for(tenant), max_retries=0, timeout=30, **kwargs
    )


def _tenant() -> str:
    return f"msgs-{uuid.uuid4().hex[:8]}"


def test_x_api_key_or_bearer_and_any_anthropic_version(api: Any) -> None:
    by_header = client(api).messages.create(model="gpt-4o-mini", max_tokens=32, messages=HI)
    assert by_header.id.startswith("msg_") and by_header.content[0].type == "text"
    bearer = anthropic.Anthropic(
        base_url=api.url,
        auth_token=api.key_for("acme"),
        max_retries=0,
        default_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "prompt-caching-2024-07-31"},
    )
    answer = bearer.messages.create(model="gemini-2.5-flash", max_tokens=32, messages=HI)
    assert answer.usage.output_tokens > 0 and answer.model


def test_fields_other_vendors_lack_are_accepted(api: Any) -> None:
    answer = client(api).messages.create(
        model="gpt-4o-mini",
        max_tokens=32,
        system="Be brief.",
        messages=HI,
        stop_sequences=["\n\nHuman:"],
        metadata={"user_id": "u-1"},
        extra_body={"temperature": 0.3, "top_p": 0.9, "top_k": 5},
    )
    job = requests.get(f"{api.url}/v1/jobs/{answer.id}", headers=api.headers("acme"), timeout=30).json()
    request = job["request"]
    assert request["user"] == "u-1" and request["temperature"] == 0.3 and "top_k" not in request
    assert request["answer_format"] == "anthropic" and request["messages"][0]["role"] == "system"


def test_idempotency_key_names_the_message(api: Any) -> None:
    sdk = client(api, _tenant())
    key = uuid.uuid4().hex
    first = sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=32, messages=HI, extra_headers={"Idempotency-Key": key}
    )
    again = sdk.messages.create(
        model="claude-haiku-4-5", max_tokens=32, messages=HI, extra_headers={"Idempotency-Key": key}
    )
    assert first.id == again.id == f"msg_{key}" and first.content == again.content


def _post(api: Any, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{api.url}/v1/messages",
        json=body,
        headers={"x-api-key": api.key_for("acme"), "anthropic-version": "2023-06-01", **(headers or {})},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("body", "status", "kind", "param"),
    [
        ({"model": "gpt-4o-mini", "messages": HI}, 400, "invalid_request_error", "max_tokens"),
        (
            {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI, "temperature": 3},
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "max_tokens": 5,
                "messages": HI,
                "tools": [{"type": "bash_20250124", "name": "bash"}],
            },
            400,
            "invalid_request_error",
            "tools[0].type",
        ),
        ({"model": "no-such-model", "max_tokens": 5, "messages": HI}, 404, "not_found_error", "model"),
        ([1, 2], 400, "invalid_request_error", None),
    ],
)
def test_refusals_are_anthropics(api: Any, body: Any, status: int, kind: str, param: str | None) -> None:
    answer = _post(api, body)
    assert answer.status_code == status
    error = ErrorResponse.model_validate(answer.json())
    assert error.error.type == kind and answer.json()["error"].get("param") == param


def test_refusals_before_the_handler_are_anthropics_too(api: Any) -> None:
    unauthenticated = requests.post(
        f"{api.url}/v1/messages", json={}, headers={"x-api-key": "lr-nope"}, timeout=30
    )
    assert unauthenticated.status_code == 401
    assert ErrorResponse.model_validate(unauthenticated.json()).error.type == "authentication_error"
    wrong_method = requests.get(
        f"{api.url}/v1/messages", headers={"x-api-key": api.key_for("acme")}, timeout=30
    )
    assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
    too_large = _post(
        api,
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "x" * SERVER_MAX_BODY_BYTES}],
        },
    )
    assert too_large.status_code == 413 and too_large.json()["error"]["type"] == "request_too_large"
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=api.url, api_key="lr-nope", max_retries=0).messages.create(
            model="gpt-4o-mini", max_tokens=5, messages=HI
        )


def test_credit_capacity_and_queue_refusals_are_the_sdks_typed_errors(api: Any, idle_api: Any) -> None:
    from tests.http.test_openai_api import add_credits

    add_credits(api, "msgs-broke", "0.000000001")
    with pytest.raises(anthropic.APIStatusError) as broke:
        client(api, "msgs-broke").messages.create(model="gpt-4o-mini", max_tokens=16, messages=HI)
    assert broke.value.status_code == 402 and broke.value.body["error"]["type"] == "billing_error"  # type: ignore[index]
    with pytest.raises(anthropic.OverloadedError) as idle:  # no worker serves the interactive queue
        client(idle_api, _tenant()).messages.create(model="gpt-4o-mini", max_tokens=16, messages=HI)
    assert idle.value.body["error"]["code"] == "no_workers"  # type: ignore[index]


async def test_failures_before_and_after_tokens(api: Any, sim: Any) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=api.url, api_key=api.key_for("acme"), max_retries=0)
    await sim.faults(
        {"model": "grok-3", "kind": "status", "status": 401},
        {"model": "x-ai/grok-3", "kind": "status", "status": 403},
    )
    try:
        with pytest.raises(anthropic.InternalServerError) as before:
            await sdk.messages.create(
                model="grok-3", max_tokens=16, messages=HI, stream=True, extra_body={"fallbacks": []}
            )
    finally:
        await sim.faults()
    assert before.value.status_code == 500 and before.value.body["error"]["code"] == "auth_failed"  # type: ignore[index]
    await sim.faults({"model": "gpt-4o-mini", "kind": "cut", "after_chunks": 3})
    texts: list[str] = []
    try:
        with pytest.raises(anthropic.APIStatusError) as after:
            async with sdk.messages.stream(
                model="gpt-4o-mini", max_tokens=64, messages=HI, extra_body={"fallbacks": []}
            ) as stream:
                async for text in stream.text_stream:
                    texts.append(text)
    finally:
        await sim.faults()
    assert texts  # the tokens before the break reached the client, then Anthropic's error event
    assert after.value.body["error"]["code"] == "stream_interrupted"  # type: ignore[index]


def test_a_message_is_a_job_with_the_same_record_shape(api: Any) -> None:
    answer = client(api).messages.create(model="claude-haiku-4-5", max_tokens=32, messages=HI)
    Message.model_validate(answer.model_dump())
    record = requests.get(f"{api.url}/v1/jobs/{answer.id}", headers=api.headers("acme"), timeout=30).json()
    assert record["status"] == "succeeded" and record["response"]["object"] == "chat.completion"
    assert record["usage"]["completion_tokens"] == answer.usage.output_tokens
