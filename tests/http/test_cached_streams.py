"""A cached answer to a streamed job streams exactly what a live stream of it would: tool calls keep
their indexes (clients merge deltas by index), the finish reason, and the usage chunk only when the
request asked for it (``stream_options.include_usage``)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import redis as sync_redis
import requests

from llm_router.keys import CACHE_PREFIX
from producer.validation import cache_key

TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "get_time")
]


def _collect(stream: Any) -> tuple[dict[int, dict[str, str]], list[str | None], list[Any]]:
    calls: dict[int, dict[str, str]] = {}
    finishes: list[str | None] = []
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            finishes.append(choice.finish_reason)
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                entry["name"] += (call.function and call.function.name) or ""
                entry["arguments"] += (call.function and call.function.arguments) or ""
    return calls, [f for f in finishes if f], chunks


def test_a_cache_hit_streams_two_tool_calls_as_a_live_stream_would(api: Any) -> None:
    tenant = f"cache-{uuid.uuid4().hex[:6]}"
    messages = [{"role": "user", "content": f"weather and time {uuid.uuid4().hex}"}]
    body = {"model": "gpt-4o-mini", "messages": messages, "tools": TOOLS, "cache": "force"}
    answer = {
        "id": "chatcmpl-cached",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz":"CET"}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32},
    }
    # an answer with two tool calls, as the cache holds it (the simulator calls one tool a turn)
    client = sync_redis.Redis.from_url(api.redis_url)
    client.set(f"{CACHE_PREFIX}{tenant}:{cache_key('gpt-4o-mini', body)}", orjson.dumps(answer), ex=60)
    client.close()
    sdk = api.openai(tenant)

    calls, finishes, chunks = _collect(sdk.chat.completions.create(**body_args(body), stream=True))
    assert calls == {
        0: {"id": "call_a", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        1: {"id": "call_b", "name": "get_time", "arguments": '{"tz":"CET"}'},
    }
    assert finishes == ["tool_calls"]
    assert all(chunk.choices for chunk in chunks)  # no usage chunk: it was not asked for

    asked = sdk.chat.completions.create(
        **body_args(body), stream=True, stream_options={"include_usage": True}
    )
    calls_again, _, chunks = _collect(asked)
    assert calls_again == calls
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 32
    assert chunks[-1].usage.model_extra["cost"] == 0.0  # served from the cache: free


def test_a_cache_hit_ends_its_stream_like_the_live_stream_did(api: Any) -> None:
    tenant = f"cache-{uuid.uuid4().hex[:6]}"
    body = {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": f"weather {uuid.uuid4().hex}"}],
        "tools": TOOLS[:1],
        "cache": "force",
    }
    sdk = api.openai(tenant)
    for include_usage in (False, True):
        options = {"stream_options": {"include_usage": True}} if include_usage else {}
        # a prompt of its own each time: the first call is a miss (live), the second a hit
        body["messages"] = [{"role": "user", "content": f"weather {uuid.uuid4().hex}"}]
        live = _collect(sdk.chat.completions.create(**body_args(body), stream=True, **options))
        raw = sdk.chat.completions.with_raw_response.create(**body_args(body), stream=True, **options)
        cached = _collect(raw.parse())
        record = requests.get(
            f"{api.url}/v1/jobs/{raw.headers['x-llm-router-job-id']}", headers=api.headers(tenant), timeout=10
        ).json()
        assert record["cached"] is True
        assert live[0] == cached[0] and live[1] == cached[1] == ["tool_calls"]
        assert [c.choices == [] for c in live[2]][-1] is include_usage
        assert [c.choices == [] for c in cached[2]][-1] is include_usage
        assert sum(c.choices == [] for c in cached[2]) == int(include_usage)


def body_args(body: dict[str, Any]) -> dict[str, Any]:
    """The body as the SDK's arguments: our reserved keys ride in ``extra_body``."""
    ours = {k: body[k] for k in ("cache",) if k in body}
    return {**{k: v for k, v in body.items() if k not in ours}, "extra_body": ours}
