"""Every recoverable fault recovered, through the HTTP chat endpoint (streamed and not) and a bulk job.

Each test installs one fault on the primary deployment (``alpha``, the simulator's ``sk-fo-alpha``)
of ``fo-main``, asks the same question three ways, and asserts the whole answer (the same text a
clean call gets: ``beta`` serves the same model, and a continuation completes it exactly), the
attempts in the record, and a time bound measured from when the request met the fault. Timings
are the issue's, scaled by ``LLM_ROUTER_FAILOVER_SCALE`` (see ``conftest``).

* ``http-stream``: the official SDK, ``stream=True``: a job a client follows (interactive queue);
* ``http``: the same, unstreamed;
* ``bulk``: ``Producer.submit`` on the bulk queue, ``stream: true``: a stream nobody follows.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from producer.producer import JobRecord
from tests.failover.rig import (
    ALPHA,
    BETA,
    FIRST_TOKEN_S,
    HEADERS_S,
    IDLE_S,
    MAX_INLINE_WAIT_S,
    SLACK_S,
    TOTAL_S,
    Rig,
    scaled,
)

MODES = ["http-stream", "http", "bulk"]
# the Anthropic simulator streams message_start, content_block_start, ping, then text in 24-character
# pieces: after 5 events, two pieces (48 characters) went out
AFTER = 5


@dataclass
class Outcome:
    """What the caller got: the answer's text (streamed, or the message), or the clean error."""

    mode: str
    record: JobRecord
    elapsed: float
    text: str | None = None
    error: str | None = None  # the error code the caller saw
    chunks: list[Any] = field(default_factory=list)

    def attempts(self) -> list[tuple[str, str | None]]:
        return [(a.provider, a.error_code) for a in self.record.attempts]

    def latency_of(self, provider: str) -> float:
        """Seconds the last call to ``provider`` took (from the record)."""
        calls = [a for a in self.record.attempts if a.provider == provider and a.latency_ms is not None]
        return calls[-1].latency_ms / 1000


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"tell me about failover {uuid.uuid4().hex[:8]}"}]


async def ask(rig: Rig, mode: str, messages: list[dict[str, str]], model: str = "fo-main") -> Outcome:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 200}
    if mode == "bulk":
        t0 = time.time()
        sub = await rig.producer.submit({**body, "stream": True})
        record = await rig.producer.wait(sub.job_id, timeout=60)
        text = record.response["choices"][0]["message"]["content"] if record.response else None
        return Outcome(
            mode, record, record.finished_at - t0, text, record.error["code"] if record.error else None
        )
    client = rig.client()
    t0 = time.monotonic()
    chunks: list[Any] = []
    error = None
    if mode == "http-stream":
        raw = await client.chat.completions.with_raw_response.create(**body, stream=True)
        try:
            async for chunk in raw.parse():
                chunks.append(chunk)
        except openai.APIError as exc:  # an error event after tokens went out
            error = (exc.body or {}).get("code") if isinstance(exc.body, dict) else str(exc)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        job_id = raw.headers["x-llm-router-job-id"]
    else:
        try:
            raw = await client.chat.completions.with_raw_response.create(**body)
            text = raw.parse().choices[0].message.content
            job_id = raw.headers["x-llm-router-job-id"]
        except openai.APIStatusError as exc:
            text, error = None, exc.body.get("code") if isinstance(exc.body, dict) else None
            job_id = exc.response.headers["x-llm-router-job-id"]
    elapsed = time.monotonic() - t0
    await client.close()
    return Outcome(mode, await rig.producer.get(job_id), elapsed, text, error, chunks)


async def clean_answer(rig: Rig, messages: list[dict[str, str]], model: str = "fo-main") -> str:
    """The answer without any fault (what the primary says)."""
    sub = await rig.producer.submit({"model": model, "messages": messages, "max_tokens": 200})
    record = await rig.producer.wait(sub.job_id, timeout=30)
    assert record.status == "succeeded"
    return record.response["choices"][0]["message"]["content"]


def assert_whole(out: Outcome, expected: str) -> None:
    """The caller got the whole answer, and the record holds exactly what it got."""
    assert out.record.status == "succeeded", (out.mode, out.record.error, out.attempts())
    assert out.text == expected, (out.mode, out.attempts())
    assert out.record.response["choices"][0]["message"]["content"] == expected
    if out.chunks:  # one answer, seamless: one id, one model, one role delta
        assert {c.id for c in out.chunks} == {out.chunks[0].id}
        assert {c.model for c in out.chunks} == {"fo-main"}
        assert sum(1 for c in out.chunks if c.choices and c.choices[0].delta.role) == 1


async def replayed(rig: Rig, out: Outcome) -> str:
    """The job's stream as a late follower replays it."""
    chunks = [c async for c in rig.producer.stream(out.record.id)]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


# -- silence and slowness: move on, never call the silent one twice ---------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_silent_provider_is_abandoned_within_the_headers_timeout(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    await sim.faults({"credential": ALPHA, "kind": "hang", "hang_s": scaled(120)})
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    assert out.attempts() == [("alpha", "timeout"), ("beta", None)]
    # abandoned within the header timeout, plus one call to the fallback
    assert HEADERS_S <= out.elapsed <= HEADERS_S + out.latency_of("beta") + SLACK_S, out.elapsed


@pytest.mark.parametrize("mode", MODES)
async def test_a_late_first_token_moves_on_at_once(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    # streamed: headers at once, the first event 20 s later; unstreamed: the answer 20 s late
    await sim.faults(
        {"credential": ALPHA, "stream": True, "kind": "stall", "after_chunks": 0, "stall_s": scaled(20)},
        {"credential": ALPHA, "stream": False, "kind": "latency", "latency_ms": scaled(20) * 1000},
    )
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    assert out.attempts() == [("alpha", "timeout"), ("beta", None)]  # no second chance for alpha
    limit = HEADERS_S if mode == "http" else FIRST_TOKEN_S  # a plain answer's first byte is its headers
    assert limit <= out.elapsed <= limit + out.latency_of("beta") + SLACK_S, out.elapsed


# -- after tokens went out: start over (nobody follows) or continue (a client follows) --------


@pytest.mark.parametrize("mode", MODES)
async def test_a_stream_cut_after_tokens_ends_with_the_whole_answer(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    await sim.faults({"credential": ALPHA, "kind": "cut", "after_chunks": AFTER, "count": 1})
    await sim.faults({"credential": ALPHA, "stream": False, "kind": "cut", "count": 1}, replace=False)
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    if mode == "http-stream":  # the client saw tokens: beta continues from them
        assert out.attempts() == [("alpha", "stream_interrupted"), ("beta", None)]
        # paid: the cut call's tokens by estimate, the continuation's by its usage
        assert out.record.usage.estimated and out.record.provider == "beta"
    else:  # nobody saw them: the same deployment again (a cut is transient)
        assert out.attempts() == [("alpha", "bad_response"), ("alpha", None)]
        assert not out.record.usage.estimated
    if mode == "bulk":  # the cut call's tokens were wiped from the job's stream
        assert await replayed(rig, out) == expected
    assert out.elapsed <= out.latency_of(out.record.provider) + out.latency_of("alpha") + SLACK_S


@pytest.mark.parametrize("mode", MODES)
async def test_a_stream_stalled_after_tokens_ends_with_the_whole_answer(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    await sim.faults(
        {"credential": ALPHA, "kind": "stall", "after_chunks": AFTER, "stall_s": scaled(60), "count": 1},
        {"credential": ALPHA, "stream": False, "kind": "stall", "stall_s": scaled(60), "count": 1},
    )
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    stalled = "stream_interrupted" if mode == "http-stream" else "timeout"
    assert out.attempts() == [("alpha", stalled), ("beta", None)]  # a stall moves on
    limit = TOTAL_S if mode == "http" else IDLE_S  # a plain body is bounded as a whole
    assert limit <= out.elapsed <= limit + out.latency_of("beta") + SLACK_S, out.elapsed
    if mode == "bulk":
        assert await replayed(rig, out) == expected


@pytest.mark.parametrize("mode", MODES)
async def test_a_malformed_event_is_skipped_and_the_stream_goes_on(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    before = rig.worker_log.read_text(errors="replace").count("malformed stream event skipped")
    await sim.faults(
        {"credential": ALPHA, "kind": "malformed_event", "after_chunks": AFTER, "count": 1},
        {"credential": ALPHA, "stream": False, "kind": "malformed_event", "count": 1},
    )
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    if mode == "http":  # a malformed body cannot be skipped: the same deployment again
        assert out.attempts() == [("alpha", "bad_response"), ("alpha", None)]
    else:  # one bad event skipped, counted in the worker's log: the call succeeds
        assert out.attempts() == [("alpha", None)]
        after = rig.worker_log.read_text(errors="replace").count("malformed stream event skipped")
        assert after == before + 1
    assert out.elapsed <= out.latency_of("alpha") * 2 + SLACK_S


# -- a short Retry-After: wait where a fallback is another model, move where it is the same ---


@pytest.mark.parametrize("mode", MODES)
async def test_a_short_retry_after_is_waited_when_the_fallback_is_another_model(
    rig: Rig, sim, mode: str
) -> None:
    messages = question()
    expected = await clean_answer(rig, messages, "fo-solo")
    wait = scaled(1.5)
    assert wait <= MAX_INLINE_WAIT_S
    await sim.faults({"credential": ALPHA, "kind": "status", "status": 429, "retry_after": wait, "count": 1})
    out = await ask(rig, mode, messages, "fo-solo")
    assert out.record.status == "succeeded" and out.text == expected  # fo-solo's own answer
    assert out.attempts() == [("alpha", "rate_limited"), ("alpha", None)]
    assert wait <= out.elapsed <= wait + out.latency_of("alpha") * 2 + SLACK_S, out.elapsed


@pytest.mark.parametrize("mode", MODES)
async def test_a_short_retry_after_moves_to_the_same_model_elsewhere(rig: Rig, sim, mode: str) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    wait = scaled(1.5)
    await sim.faults({"credential": ALPHA, "kind": "status", "status": 429, "retry_after": wait, "count": 1})
    out = await ask(rig, mode, messages)
    assert_whole(out, expected)
    assert out.attempts() == [("alpha", "rate_limited"), ("beta", None)]
    assert out.elapsed < wait  # no wait: the same answer was to be had at once


# -- a fallback that refuses the prefill: the original failure, never the fallback's 400 ------


@pytest.mark.parametrize("mode", MODES)
async def test_a_refused_prefill_ends_with_the_original_failure_and_the_partial_text(
    rig: Rig, sim, mode: str
) -> None:
    messages = question()
    expected = await clean_answer(rig, messages)
    await sim.faults(
        {"credential": ALPHA, "kind": "cut", "after_chunks": AFTER, "count": 1},
        {"credential": ALPHA, "stream": False, "kind": "cut", "count": 1},
        {"credential": BETA, "kind": "refuse_prefill"},
    )
    out = await ask(rig, mode, messages)
    if mode != "http-stream":  # nobody followed: no prefill was ever asked for
        assert_whole(out, expected)
        assert out.attempts() == [("alpha", "bad_response"), ("alpha", None)]
        return
    record = out.record
    assert record.status == "failed" and record.error["code"] == "stream_interrupted" == out.error
    assert out.attempts() == [("alpha", "stream_interrupted"), ("beta", "upstream_invalid_request")]
    # the client kept what it was sent; the record says so, and bills it by estimate
    assert out.text and expected.startswith(out.text) and record.partial_text == out.text
    assert record.usage.estimated and record.usage.completion_tokens == -(-len(out.text.encode()) // 4)
    assert out.elapsed <= out.latency_of("alpha") + out.latency_of("beta") + SLACK_S


# -- continuation is a capability of the wire format ------------------------------------------


@pytest.mark.parametrize(
    ("model", "primary", "after"),
    [
        pytest.param("fo-gemini", "sk-fo-delta", 2, id="gemini-model-turn"),
        pytest.param("fo-prefix", "sk-fo-mistral", 3, id="openai-prefix"),
    ],
)
async def test_a_followed_stream_continues_in_every_wire_format(
    rig: Rig, sim, model: str, primary: str, after: int
) -> None:
    messages = question()
    expected = await clean_answer(rig, messages, model)
    await sim.faults({"credential": primary, "kind": "cut", "after_chunks": after, "count": 1})
    out = await ask(rig, "http-stream", messages, model)
    assert out.record.status == "succeeded" and out.text == expected, out.attempts()
    assert out.record.attempts[0].error_code == "stream_interrupted" and len(out.record.attempts) == 2
    assert {c.id for c in out.chunks} == {out.chunks[0].id}
