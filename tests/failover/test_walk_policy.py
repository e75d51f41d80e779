"""The walk's failover decisions offline (no network, no Redis): which errors call the same deployment
again, what a 429's Retry-After does per the catalog's ``retry_after`` block, and how a followed
stream broken after tokens is continued, on the failover rig's catalog."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from config.catalog import Catalog, CatalogFile, Deployment
from config.settings import Settings
from llm_router.circuit_breaker import Admission, AdmissionState, BreakerReport, Policy
from llm_router.contract import JobStatus
from llm_router.errors import (
    Overloaded,
    RateLimited,
    RouterError,
    StreamInterrupted,
    UpstreamInvalidRequest,
    UpstreamTimeout,
)
from tests.failover.rig import KEYS, catalog_spec
from worker.breaker import RetryBudget
from worker.providers import Completion
from worker.route_walk import PassResult, RouteWalk
from worker.streaming import ChunkPublisher

MESSAGES = [{"role": "user", "content": "hi"}]


def catalog(**model_blocks: dict[str, Any]) -> Catalog:
    """The rig's catalog, with extra blocks on its models (``fo_solo={"retry_after": ...}``)."""
    spec = catalog_spec()
    for name, block in model_blocks.items():
        spec["models"][name.replace("_", "-")].update(block)
    return Catalog(CatalogFile.model_validate(spec), env=KEYS, upstream="http://127.0.0.1:9")


def completion(text: str = "ok", prompt: int = 3) -> Completion:
    response = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
    }
    return Completion(response, prompt_tokens=prompt, completion_tokens=1)


class Upstream:
    """Answers calls by deployment from a script: per deployment, a list of outcomes in call order
    (an error to raise, or a completion); what the list does not cover answers ``ok``."""

    def __init__(self, script: dict[str, list[RouterError | Completion]] | None = None) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        self.calls.append((dep.provider, request))
        outcomes = self.script.get(dep.provider) or []
        outcome = outcomes.pop(0) if outcomes else completion()
        if isinstance(outcome, RouterError):
            raise outcome
        return outcome

    def providers(self) -> list[str]:
        return [p for p, _ in self.calls]


class Store:
    """What a ``ChunkPublisher`` writes, kept in memory."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []

    async def publish(self, job_id: str, chunks: list[bytes], *, maxlen: int) -> None:
        self.chunks.extend(orjson.loads(c) for c in chunks)

    async def publish_error(self, job_id: str, error: dict[str, Any]) -> None:
        self.errors.append(error)

    async def drop_stream(self, job_id: str) -> None:
        self.chunks.clear()


def walk(
    cat: Catalog, route: list[str], upstream: Any, *, publisher: ChunkPublisher | None = None
) -> RouteWalk:
    settings = Settings(
        _env_file=None, same_deployment_retries=1, retry_backoff_s=0.01, max_inline_wait_s=0.2
    )
    policies = {d.id: Policy.for_deployment(d, settings) for m in cat.models for d in cat.deployments(m)}

    async def admit(dep: Deployment, est: int, reports: list[BreakerReport]) -> Admission:
        return Admission(AdmissionState.OK)

    async def no_images(request: dict[str, Any]) -> dict[str, Any]:
        return request

    request = {"model": route[0], "messages": MESSAGES, "max_tokens": 100}
    if publisher is not None:
        request["stream"] = True
    return RouteWalk(
        job_id="j",
        request=request,
        request_json=orjson.dumps(request),
        route=route,
        attempts=[],
        deadline_at=time.time() + 60,
        admissions={},
        est_tokens=10,
        clock_offset_s=0.0,
        catalog=cat,
        settings=settings,
        policies=policies,
        budget=RetryBudget(1.0),
        call=upstream,
        admit=admit,
        inflight={},
        scrub=lambda exc: None,
        inline_images=no_images,
        stream=upstream if publisher is not None else None,
        publisher=publisher,
    )


def attempts(result: PassResult) -> list[tuple[str, str | None]]:
    return [(a["provider"], a["error_code"]) for a in result.fields["attempts"]]


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UpstreamTimeout("no response headers"), ["alpha", "beta"]),  # silent: never twice
        (Overloaded("503"), ["alpha", "alpha"]),  # transient: once more, then it answers
        (UpstreamInvalidRequest("bad"), ["alpha"]),  # the caller's fault: the pass ends
    ],
)
async def test_which_errors_call_the_same_deployment_again(error: RouterError, expected: list[str]) -> None:
    upstream = Upstream({"alpha": [error]})
    await walk(catalog(), ["fo-main", "fo-other"], upstream).run()
    assert upstream.providers() == expected


@pytest.mark.parametrize(
    ("model", "block", "retry_after", "expected"),
    [
        # auto: the next deployment is another model (fo-other): wait, and alpha again
        ("fo-solo", {}, 0.05, ["alpha", "alpha"]),
        # auto: the same model is served by beta: move there at once (a Retry-After well above a
        # walk's own time on a busy machine, still under the inline limit, tells "at once" apart)
        ("fo-main", {}, 0.15, ["alpha", "beta"]),
        # a wait longer than the inline limit (0.2 s) is never sat out in the worker slot
        ("fo-solo", {}, 5.0, ["alpha", "gamma"]),
        # no Retry-After: no telling how long, move on
        ("fo-solo", {}, None, ["alpha", "gamma"]),
        # per model: never wait, or wait even where the same model is elsewhere
        ("fo-solo", {"retry_after": {"wait": "never"}}, 0.15, ["alpha", "gamma"]),
        ("fo-main", {"retry_after": {"wait": "always"}}, 0.05, ["alpha", "alpha"]),
        # per model: a longer inline wait than the setting's
        ("fo-solo", {"retry_after": {"max_s": 0.5}}, 0.3, ["alpha", "alpha"]),
    ],
)
async def test_a_429s_retry_after_by_the_models_policy(
    model: str, block: dict[str, Any], retry_after: float | None, expected: list[str]
) -> None:
    cat = catalog(**{model.replace("-", "_"): block})
    upstream = Upstream({"alpha": [RateLimited("slow down", retry_after=retry_after)]})
    t0 = time.monotonic()
    result = await walk(cat, [model, "fo-other"], upstream).run()
    assert upstream.providers() == expected and result.fields["status"] == JobStatus.SUCCEEDED
    waited = time.monotonic() - t0
    if expected == ["alpha", "alpha"]:
        assert retry_after is not None and waited >= retry_after
    elif retry_after is not None:
        assert waited < retry_after


async def test_a_429_with_nothing_after_it_defers_rather_than_holding_the_slot() -> None:
    cat = catalog()
    upstream = Upstream({"alpha": [RateLimited("slow down", retry_after=0.05)]})
    result = await walk(cat, ["fo-solo"], upstream).run()
    assert upstream.providers() == ["alpha"]
    assert result.fields["status"] == JobStatus.FAILED and result.retryable and result.retry_after == 0.05


# -- continuation of a followed stream --------------------------------------------------------


def chunk(
    content: str | None = None, *, role: bool = False, id: str = "first", finish: str | None = None
) -> dict:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return {"id": id, "created": 7, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class Streams(Upstream):
    """A streamed upstream: alpha publishes ``sent`` then breaks; the others publish their answer."""

    def __init__(self, publisher: ChunkPublisher, sent: str, rest: str, **script: Any) -> None:
        super().__init__(script)
        self.publisher, self.sent, self.rest = publisher, sent, rest

    async def __call__(self, dep: Deployment, request: dict[str, Any], deadline_at: float) -> Completion:
        self.calls.append((dep.provider, request))
        outcomes = self.script.get(dep.provider) or []
        if outcomes:
            outcome = outcomes.pop(0)
            raise outcome
        if dep.provider == "alpha":
            self.publisher.add([chunk(role=True), chunk(self.sent)])
            await self.publisher.drain()
            raise StreamInterrupted("cut", partial_text=self.sent, cause="connection_error")
        self.publisher.add(
            [chunk(role=True, id="second"), chunk(self.rest, id="second"), chunk(finish="stop")]
        )
        await self.publisher.drain()
        return completion(self.rest.lstrip(), prompt=50)


async def test_a_followed_stream_broken_after_tokens_goes_on_from_the_text_sent() -> None:
    store = Store()
    publisher = ChunkPublisher(store, "j", "fo-main", 100)  # type: ignore[arg-type]
    upstream = Streams(publisher, "Hello, wor", "ld, again.")
    result = await walk(catalog(), ["fo-main"], upstream, publisher=publisher).run()
    assert upstream.providers() == ["alpha", "beta"]
    prefilled = upstream.calls[1][1]
    assert prefilled["messages"] == [*MESSAGES, {"role": "assistant", "content": "Hello, wor"}]
    assert prefilled["max_tokens"] == 100 - 3  # what the first call had left (10 bytes: 3 tokens)
    # the client's stream: one answer, one id, one role delta, no error event
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in store.chunks) == "Hello, world, again."
    )
    assert {c["id"] for c in store.chunks} == {"first"} and not store.errors
    assert sum(1 for c in store.chunks if c["choices"][0]["delta"].get("role")) == 1
    fields = result.fields
    assert fields["status"] == JobStatus.SUCCEEDED and fields["response"]["id"] == "first"
    assert fields["response"]["choices"][0]["message"]["content"] == "Hello, world, again."
    assert attempts(result) == [("alpha", "stream_interrupted"), ("beta", None)]
    # both calls are paid: the broken one by estimate (its prompt, 3 tokens sent), beta by its usage
    assert fields["usage"]["estimated"] and fields["usage"]["completion_tokens"] == 3 + 1
    assert fields["usage"]["prompt_tokens"] > 50


async def test_the_whitespace_a_prefill_leaves_out_is_not_sent_twice() -> None:
    store = Store()
    publisher = ChunkPublisher(store, "j", "fo-main", 100)  # type: ignore[arg-type]
    upstream = Streams(publisher, "Hello, ", " world.")
    result = await walk(catalog(), ["fo-main"], upstream, publisher=publisher).run()
    assert upstream.calls[1][1]["messages"][-1]["content"] == "Hello,"  # Anthropic refuses trailing space
    assert result.fields["response"]["choices"][0]["message"]["content"] == "Hello, world."


async def test_a_refused_prefill_ends_with_the_original_failure_and_the_text_sent() -> None:
    store = Store()
    publisher = ChunkPublisher(store, "j", "fo-main", 100)  # type: ignore[arg-type]
    upstream = Streams(publisher, "Hello, wor", "", beta=[UpstreamInvalidRequest("no prefill here")])
    result = await walk(catalog(), ["fo-main", "fo-other"], upstream, publisher=publisher).run()
    # gamma (OpenAI's format, no prefill) is not even asked: it would start the answer over
    assert upstream.providers() == ["alpha", "beta"]
    fields = result.fields
    assert fields["status"] == JobStatus.FAILED and fields["error"]["code"] == "stream_interrupted"
    assert fields["partial_text"] == "Hello, wor" and store.errors[0]["code"] == "stream_interrupted"
    assert fields["usage"]["estimated"] and fields["usage"]["completion_tokens"] == 3
