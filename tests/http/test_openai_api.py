"""The OpenAI-compatible front through the official SDK: chat (plain, streamed, failed) and models."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]


async def test_chat_completion_through_queue_with_cost(api: Any) -> None:
    client = api.async_openai("acme")
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
    )
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.total_tokens > 0
    extra = completion.usage.model_extra or {}
    assert extra["cost"] > 0
    assert "credits_remaining" in extra  # None: this tenant is not metered
    # the answer is a job like any other: its record is readable by the same tenant
    job_id = raw.headers["x-llm-router-job-id"]
    async with aiohttp.ClientSession() as s:
        r = await s.get(f"{api.url}/v1/jobs/{job_id}", headers=api.headers("acme"))
        record = await r.json()
    assert r.status == 200
    assert record["status"] == "succeeded" and record["tenant"] == "acme"
    assert record["usage"]["cost"] == pytest.approx(extra["cost"])


async def test_chat_completion_streamed_as_openai_sse(api: Any) -> None:
    client = api.async_openai("acme")
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=32, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


async def test_a_streamed_usage_chunk_carries_the_cost(api: Any) -> None:
    client = api.async_openai("acme")
    for model in ("gpt-4o-mini", "claude-sonnet-4-5"):
        stream = await client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        usage = chunks[-1].usage
        assert usage is not None and not chunks[-1].choices, model
        assert usage.completion_tokens > 0 and (usage.model_extra or {}).get("cost", 0) > 0, model


async def test_streamed_text_equals_the_record(api: Any) -> None:
    headers = api.headers("acme")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 24, "stream": True}
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{api.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status == 200 and r.content_type == "text/event-stream"
        raw = (await r.read()).decode()
        job_id = r.headers["x-llm-router-job-id"]
        record = await (await s.get(f"{api.url}/v1/jobs/{job_id}", headers=headers)).json()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    text = "".join(
        (ChatCompletionChunk.model_validate_json(e).choices or [None])[0].delta.content or ""  # type: ignore[union-attr]
        for e in events[:-1]
        if ChatCompletionChunk.model_validate_json(e).choices
    )
    assert text == record["response"]["choices"][0]["message"]["content"]


async def test_failed_job_answers_its_error_with_status_502(api: Any, sim: Any) -> None:
    await sim.faults(
        {"model": "grok-3", "kind": "status", "status": 401},
        {"model": "x-ai/grok-3", "kind": "status", "status": 403},
    )
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await api.async_openai("acme").chat.completions.create(
                model="grok-3", messages=MESSAGES, extra_body={"fallbacks": []}
            )
    finally:
        await sim.faults()
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "auth_failed" and error["type"] == "upstream_error"
    assert "sk-sim" not in str(info.value.response.text)


async def test_stream_that_fails_before_a_token_answers_with_status(api: Any, sim: Any) -> None:
    await sim.faults(
        {"model": "grok-3", "kind": "status", "status": 401},
        {"model": "x-ai/grok-3", "kind": "status", "status": 403},
    )
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await api.async_openai("acme").chat.completions.create(
                model="grok-3", messages=MESSAGES, stream=True, extra_body={"fallbacks": []}
            )
    finally:
        await sim.faults()
    assert info.value.status_code == 502


async def test_invalid_request_and_unknown_model(api: Any) -> None:
    client = api.async_openai("acme")
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=7)
    assert bad.value.body["code"] == "invalid_request" and bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]


async def test_no_worker_on_interactive_queue_is_503(idle_api: Any) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        await idle_api.async_openai("acme").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 503 and info.value.body["code"] == "no_workers"  # type: ignore[index]


async def test_models_list_and_retrieve(api: Any) -> None:
    client = api.async_openai("acme")
    models = [m async for m in client.models.list()]
    ids = {m.id for m in models}
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash"} <= ids
    by_id = {m.id: m for m in models}
    assert by_id["claude-sonnet-4-5"].owned_by == "anthropic"
    assert all(m.object == "model" for m in models)
    model = await client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.owned_by == "openai"
    # routes are listed too: a request may name one as its model
    assert by_id["auto"].owned_by == "llm-router-route" and "code" in ids
    assert (await client.models.retrieve("auto")).id == "auto"
    answer = await client.chat.completions.create(model="code", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "gpt-4.1"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


def add_credits(api: Any, tenant: str, usd: str) -> None:
    env = {**os.environ, "REDIS_URL": api.redis_url, "LLM_ROUTER_LOG_LEVEL": "WARNING"}
    added = subprocess.run(
        [sys.executable, "-m", "llm_router.cli", "credits", "add", tenant, usd],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert added.returncode == 0, added.stderr


async def test_credits_remaining_then_402_when_out_of_credit(api: Any) -> None:
    add_credits(api, "metered", "5")
    completion = await api.async_openai("metered").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
    )
    extra = completion.usage.model_extra or {}  # type: ignore[union-attr]
    assert 0 < extra["credits_remaining"] < 5
    assert extra["credits_remaining"] == pytest.approx(5 - extra["cost"], abs=1e-6)
    # a job's worst-case cost is held from the credit before it runs: a near-empty credit refuses it
    add_credits(api, "broke", "0.000000001")
    with pytest.raises(openai.APIStatusError) as info:
        await api.async_openai("broke").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=16
        )
    assert info.value.status_code == 402
    assert info.value.body["code"] == "insufficient_credits"  # type: ignore[index]


async def test_stream_broken_after_tokens_ends_with_an_error_event(api: Any, sim: Any) -> None:
    await sim.faults({"model": "gpt-4o-mini", "kind": "cut", "after_chunks": 3})
    received: list[ChatCompletionChunk] = []
    try:
        stream = await api.async_openai("acme").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=64, stream=True, extra_body={"fallbacks": []}
        )
        with pytest.raises(openai.APIError) as info:
            async for chunk in stream:
                received.append(chunk)
    finally:
        await sim.faults()
    assert received  # the tokens before the break reached the client
    assert info.value.body["code"] == "stream_interrupted"  # type: ignore[index]
    assert info.value.body["type"] == "upstream_error"  # type: ignore[index]
