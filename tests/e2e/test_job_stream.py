"""Streaming jobs end to end: worker processes, the simulator's three formats, the job's Redis stream."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from producer.producer import Producer

HI = [{"role": "user", "content": "tell me a story about streams"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


async def _collect(producer: Producer, job_id: str) -> list[dict]:
    return [chunk async for chunk in producer.stream(job_id)]


def _text(chunks: list[dict]) -> str:
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))


@pytest.mark.parametrize("model", ["gpt-4o", "claude-sonnet-4-5", "gemini-2.5-flash"])
async def test_a_streamed_job_ends_with_the_same_record_as_a_plain_one(e2e: Producer, model: str) -> None:
    body = {"model": model, "fallbacks": [], "messages": HI, "max_tokens": 60}
    streamed = await e2e.submit({**body, "stream": True})
    chunks = await _collect(e2e, streamed.job_id)
    plain = await e2e.submit({**body, "metadata": {"plain": True}})
    records = await e2e.wait_many([streamed.job_id, plain.job_id], timeout=30)
    s, p = records
    assert s.status == p.status == "succeeded"
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert chunk["model"] == model
    ChatCompletion.model_validate(s.response)
    assert (
        _text(chunks)
        == s.response["choices"][0]["message"]["content"]
        == p.response["choices"][0]["message"]["content"]
    )
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.cost_nanos) == (
        p.usage.prompt_tokens,
        p.usage.completion_tokens,
        p.usage.cost_nanos,
    )
    assert s.response["choices"][0]["finish_reason"] == p.response["choices"][0]["finish_reason"]


async def test_a_late_follower_replays_the_whole_stream(e2e: Producer) -> None:
    sub = await e2e.submit({"model": "gpt-4o-mini", "messages": HI, "stream": True})
    record = await e2e.wait(sub.job_id, timeout=30)
    replay = await _collect(e2e, sub.job_id)  # joins after the job ended
    assert replay and _text(replay) == record.response["choices"][0]["message"]["content"]
    again = await _collect(e2e, sub.job_id)
    assert again == replay


async def test_tool_call_deltas_reassemble_into_the_plain_record(e2e: Producer) -> None:
    body = {
        "model": "gpt-4o",
        "fallbacks": [],
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [TOOL],
    }
    streamed = await e2e.submit({**body, "stream": True})
    plain = await e2e.submit({**body, "metadata": {"plain": True}})
    s, p = await e2e.wait_many([streamed.job_id, plain.job_id], timeout=30)
    assert s.status == p.status == "succeeded"
    sm, pm = s.response["choices"][0]["message"], p.response["choices"][0]["message"]
    assert [c["function"] for c in sm["tool_calls"]] == [c["function"] for c in pm["tool_calls"]]
    assert s.response["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_stream_cut_before_its_first_token_falls_back(e2e: Producer, sim) -> None:
    await sim.faults({"credential": "sk-sim-openai", "model": "gpt-4.1", "kind": "cut", "after_chunks": 0})
    try:
        sub = await e2e.submit({"model": "gpt-4.1", "messages": HI, "stream": True})
        chunks = await _collect(e2e, sub.job_id)
        record = await e2e.get(sub.job_id)
    finally:
        await sim.faults()
    assert record.status == "succeeded" and record.provider != "openai"
    assert record.attempts[0].provider == "openai" and record.attempts[0].outcome == "error"
    assert _text(chunks) == record.response["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"kind": "cut", "after_chunks": 3}, id="cut"),
        pytest.param({"kind": "stall", "after_chunks": 3, "stall_s": 3}, id="stall-past-idle-timeout"),
    ],
)
async def test_a_bulk_stream_broken_after_tokens_starts_over_and_ends_whole(
    e2e: Producer, sim, fault: dict
) -> None:
    """Nobody follows a bulk job as it runs: a stream broken after tokens is started over elsewhere
    (tests/failover has the followed case, continued on a fallback)."""
    body = {"model": "gpt-4.1-mini", "messages": HI, "stream": True}
    await sim.faults({"credential": "sk-sim-openai", "model": "gpt-4.1-mini", **fault})
    try:
        sub = await e2e.submit(body)
        record = await e2e.wait(sub.job_id, timeout=30)
    finally:
        await sim.faults()
    clean = await e2e.wait((await e2e.submit({**body, "metadata": {"clean": True}})).job_id, timeout=30)
    assert record.status == "succeeded" and record.provider == "aisa" and record.partial_text is None
    text = record.response["choices"][0]["message"]["content"]
    assert text == clean.response["choices"][0]["message"]["content"]
    assert record.attempts[0].provider == "openai" and record.attempts[0].error_code in (
        "bad_response",
        "timeout",
    )
    # the tokens the broken call streamed were wiped: a follower replays the whole answer alone
    assert _text(await _collect(e2e, sub.job_id)) == text
    assert not record.usage.estimated and record.usage.cost_nanos == clean.usage.cost_nanos


async def test_a_stream_that_never_starts_times_out_and_falls_back(e2e: Producer, sim) -> None:
    await sim.faults(
        {"credential": "sk-sim-openai", "model": "o1", "kind": "stall", "after_chunks": 0, "stall_s": 5}
    )
    try:
        sub = await e2e.submit({"model": "o1", "messages": HI, "stream": True})
        await _collect(e2e, sub.job_id)
        record = await e2e.get(sub.job_id)
    finally:
        await sim.faults()
    assert record.status == "succeeded"
    assert record.attempts[0].error_code == "timeout" and record.provider != "openai"


def test_cli_chat_stream_prints_the_answer(worker_env, e2e) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_router.cli",
            "chat",
            "--model",
            "gpt-4o",
            "--message",
            "hello",
            "--stream",
        ],
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Simulated reply from gpt-4o")


def test_sync_client_chat_stream_yields_text(e2e_settings, sim_catalog, e2e) -> None:
    from producer.client import Client

    with Client(e2e_settings, sim_catalog) as client:
        pieces = list(client.chat_stream("gemini-2.5-flash", HI, max_tokens=40))
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert orjson.dumps(pieces)
