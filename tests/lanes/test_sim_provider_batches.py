"""The simulator's Anthropic Message Batches and Gemini batch mode, driven by the official SDKs
(``anthropic``, ``google-genai``) and checked against their types: success, per-item failures,
expiry, cancellation, and bad requests naming the field."""

from __future__ import annotations

import asyncio
import time

import anthropic
import orjson
import pytest
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from google import genai
from google.genai import types as gtypes

MSG = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def claude(sim) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url, api_key="sk-ant-sim", max_retries=0)


@pytest.fixture
def gemini(sim) -> genai.Client:
    options = gtypes.HttpOptions(
        base_url=sim.url, api_version="v1beta", retry_options=gtypes.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key="gm-sim", http_options=options)


def _requests(n: int) -> list[dict]:
    return [
        {"custom_id": f"r{i}", "params": {**MSG, "messages": [{"role": "user", "content": f"hi {i}"}]}}
        for i in range(n)
    ]


async def _until_ended(claude: anthropic.AsyncAnthropic, batch_id: str, timeout: float = 10) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        raw = await claude.messages.batches.with_raw_response.retrieve(batch_id)
        batch = MessageBatch.model_validate(
            orjson.loads(raw.http_response.content)
        )  # strict: the SDK's own type
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch stayed {batch.processing_status}"
        await asyncio.sleep(0.05)


async def _results(
    claude: anthropic.AsyncAnthropic, batch_id: str
) -> dict[str, MessageBatchIndividualResponse]:
    out = {}
    async for line in await claude.messages.batches.results(batch_id):
        out[line.custom_id] = MessageBatchIndividualResponse.model_validate(line.model_dump())
    return out


async def test_anthropic_batch_succeeds_with_messages_and_usage(claude, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.1, 0.2], seed=1)
    created = await claude.messages.batches.create(requests=_requests(3))
    assert created.processing_status == "in_progress" and created.request_counts.processing == 3
    assert created.results_url is None
    ended = await _until_ended(claude, created.id)
    assert ended.request_counts.succeeded == 3 and ended.ended_at is not None and ended.results_url
    results = await _results(claude, created.id)
    assert sorted(results) == ["r0", "r1", "r2"]
    message = results["r0"].result.message  # type: ignore[union-attr]
    assert message.content[0].text and message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    listed = await claude.messages.batches.list()
    assert any(b.id == created.id for b in listed.data)


async def test_anthropic_per_item_errors_expiry_and_cancellation(claude, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.05, 0.05], item_failure=0.5, seed=3)
    created = await claude.messages.batches.create(requests=_requests(10))
    ended = await _until_ended(claude, created.id)
    counts = ended.request_counts
    assert 0 < counts.errored < 10 and counts.succeeded + counts.errored == 10
    results = await _results(claude, created.id)
    errored = [r.result for r in results.values() if r.result.type == "errored"]
    assert {e.error.error.type for e in errored} == {"api_error"}  # type: ignore[union-attr]

    # params are checked when the batch runs: a bad one is an errored result, the rest succeed
    await sim_lanes(turnaround_s=[0.05, 0.05])
    bad = {"custom_id": "bad", "params": {**MSG, "max_tokens": -1}}
    created = await claude.messages.batches.create(requests=[*_requests(1), bad])
    await _until_ended(claude, created.id)
    results = await _results(claude, created.id)
    assert results["r0"].result.type == "succeeded" and results["bad"].result.type == "errored"
    assert results["bad"].result.error.error.type == "invalid_request_error"  # type: ignore[union-attr]

    await sim_lanes(never_complete=1.0, expiry_s=0.2)
    created = await claude.messages.batches.create(requests=_requests(2))
    ended = await _until_ended(claude, created.id)
    assert ended.request_counts.expired == 2
    assert {r.result.type for r in (await _results(claude, created.id)).values()} == {"expired"}

    await sim_lanes(never_complete=1.0)
    created = await claude.messages.batches.create(requests=_requests(2))
    canceling = await claude.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    ended = await _until_ended(claude, created.id)
    assert ended.request_counts.canceled == 2


async def test_anthropic_bad_batches_name_the_field(claude) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.batches.create(requests=[{"custom_id": "tenant/job", "params": MSG}])
    assert "requests.0.custom_id" in str(err.value)
    with pytest.raises(anthropic.BadRequestError) as err:
        await claude.messages.batches.create(requests=[{"custom_id": "a", "params": MSG}] * 2)
    assert "requests.1.custom_id" in str(err.value)
    with pytest.raises(anthropic.NotFoundError):
        await claude.messages.batches.retrieve("msgbatch_nope")


def _inline(n: int) -> list[gtypes.InlinedRequest]:
    return [
        gtypes.InlinedRequest(
            contents=[gtypes.Content(role="user", parts=[gtypes.Part(text=f"hi {i}")])],
            metadata={"key": str(i)},
        )
        for i in range(n)
    ]


async def _until_done(gemini: genai.Client, name: str, timeout: float = 10) -> gtypes.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = await gemini.aio.batches.get(name=name)
        if job.done:
            return job
        assert time.monotonic() < deadline, f"batch stayed {job.state}"
        await asyncio.sleep(0.05)


async def test_gemini_batch_succeeds_with_inlined_responses(gemini, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.1, 0.2], seed=1)
    job = await gemini.aio.batches.create(
        model="gemini-2.5-flash", src=_inline(3), config={"display_name": "ours-1"}
    )
    assert job.name and job.name.startswith("batches/") and job.state == gtypes.JobState.JOB_STATE_PENDING
    done = await _until_done(gemini, job.name)
    assert done.state == gtypes.JobState.JOB_STATE_SUCCEEDED and done.display_name == "ours-1"
    assert done.dest is not None and done.dest.inlined_responses is not None
    responses = done.dest.inlined_responses
    assert [r.metadata for r in responses] == [{"key": "0"}, {"key": "1"}, {"key": "2"}]
    first = gtypes.InlinedResponse.model_validate(responses[0].model_dump())
    assert first.response is not None and first.response.text
    assert first.response.usage_metadata is not None and first.response.usage_metadata.prompt_token_count
    listed = [b async for b in await gemini.aio.batches.list()]
    assert any(b.name == job.name for b in listed)


async def test_gemini_per_item_errors_expiry_and_cancellation(gemini, sim_lanes) -> None:
    await sim_lanes(turnaround_s=[0.05, 0.05], item_failure=0.5, seed=3)
    job = await gemini.aio.batches.create(model="gemini-2.5-flash", src=_inline(10))
    done = await _until_done(gemini, job.name)
    assert done.dest is not None and done.dest.inlined_responses is not None
    errors = [r.error for r in done.dest.inlined_responses if r.error is not None]
    assert 0 < len(errors) < 10 and all(e.code == 13 for e in errors)

    await sim_lanes(never_complete=1.0, expiry_s=0.2)
    job = await gemini.aio.batches.create(model="gemini-2.5-flash", src=_inline(2))
    done = await _until_done(gemini, job.name)
    assert done.state == gtypes.JobState.JOB_STATE_EXPIRED and done.dest is None

    await sim_lanes(never_complete=1.0)
    job = await gemini.aio.batches.create(model="gemini-2.5-flash", src=_inline(2))
    await gemini.aio.batches.cancel(name=job.name)
    done = await _until_done(gemini, job.name)
    assert done.state == gtypes.JobState.JOB_STATE_CANCELLED


async def test_gemini_bad_requests_are_per_item_and_unknown_batches_404(gemini, sim_lanes) -> None:
    from google.genai import errors

    await sim_lanes(turnaround_s=[0.05, 0.05])
    bad = gtypes.InlinedRequest(contents=[gtypes.Content(role="user", parts=[])])
    job = await gemini.aio.batches.create(model="gemini-2.5-flash", src=[*_inline(1), bad])
    done = await _until_done(gemini, job.name)
    assert done.dest is not None and done.dest.inlined_responses is not None
    ok, failed = done.dest.inlined_responses
    assert ok.response is not None and failed.error is not None and failed.error.code == 3
    with pytest.raises(errors.ClientError) as err:
        await gemini.aio.batches.get(name="batches/nope")
    assert err.value.code == 404
