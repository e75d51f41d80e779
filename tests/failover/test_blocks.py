"""The catalog's failover blocks (``timeouts``, ``retry_after``, ``prefill``) as a worker resolves them,
a continuation's request in each wire format, and a continuation in the worst-case reservation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from config.catalog import Catalog, CatalogFile, Deployment
from config.cost import CostModel, demand_of, followed_stream
from config.settings import Settings
from tests.failover.rig import KEYS, catalog_spec
from worker.http import Timeouts
from worker.providers import ADAPTERS
from worker.providers.prefill import continuation_request, prefill_style

REQUEST: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def catalog(spec: dict[str, Any] | None = None) -> Catalog:
    return Catalog(
        CatalogFile.model_validate(spec or catalog_spec()), env=KEYS, upstream="http://127.0.0.1:9"
    )


def dep(cat: Catalog, model: str, provider: str) -> Deployment:
    return next(d for d in cat.deployments(model) if d.provider == provider)


def test_timeouts_come_from_the_catalog_block_over_the_settings() -> None:
    spec = catalog_spec()
    spec["providers"]["beta"]["timeouts"] = {"headers_s": 4, "idle_s": 9}
    spec["models"]["fo-main"]["deployments"][1]["timeouts"] = {"idle_s": 7}  # a deployment's own wins
    cat = catalog(spec)
    settings = Settings(_env_file=None, connect_timeout_s=3, call_timeout_s=60, stream_ttft_s=20)
    limits = Timeouts.of(dep(cat, "fo-main", "beta"), settings)
    assert limits == Timeouts(connect_s=3, headers_s=4, first_token_s=20, idle_s=7, total_s=60)
    assert limits.headers(streamed=True) == limits.headers(streamed=False) == 4  # both alike


def test_unset_the_headers_wait_follows_the_kind_of_call() -> None:
    settings = Settings(_env_file=None, call_timeout_s=60, stream_ttft_s=20)
    limits = Timeouts.of(dep(catalog(), "fo-main", "beta"), settings)
    assert limits.headers_s is None
    # a stream's headers come at once; an unstreamed answer's come with the whole answer
    assert limits.headers(streamed=True) == 20 and limits.headers(streamed=False) == 60


def test_retry_after_and_prefill_blocks_merge_provider_model_deployment() -> None:
    spec = catalog_spec()
    spec["providers"]["alpha"]["retry_after"] = {"wait": "never", "max_s": 1}
    spec["models"]["fo-main"]["retry_after"] = {"wait": "always"}
    spec["models"]["fo-main"]["prefill"] = "none"
    spec["models"]["fo-main"]["deployments"][1]["prefill"] = "last_message"
    cat = catalog(spec)
    alpha, beta = dep(cat, "fo-main", "alpha"), dep(cat, "fo-main", "beta")
    assert alpha.retry_after is not None and (alpha.retry_after.wait, alpha.retry_after.max_s) == (
        "always",
        1,
    )
    assert prefill_style(alpha) == "none" and prefill_style(beta) == "last_message"
    # unset, the wire format's default: Anthropic and Gemini continue a final turn, OpenAI cannot
    plain = catalog()
    assert prefill_style(dep(plain, "fo-main", "alpha")) == "last_message"
    assert prefill_style(dep(plain, "fo-gemini", "delta")) == "last_message"
    assert prefill_style(dep(plain, "fo-other", "gamma")) == "none"
    assert prefill_style(dep(plain, "fo-prefix", "mistral")) == "prefix"


def test_the_shipped_catalog_marks_what_cannot_take_a_prefill(sim_catalog: Catalog) -> None:
    by_id = {d.id: d for m in sim_catalog.models for d in sim_catalog.deployments(m)}
    assert prefill_style(by_id["anthropic/claude-sonnet-4-5"]) == "last_message"
    assert prefill_style(by_id["anthropic/claude-opus-4-6"]) == "none"  # Claude 4.6 refuses prefills
    assert prefill_style(by_id["mistral/mistral-large-latest"]) == "prefix"
    assert prefill_style(by_id["openai/gpt-4o"]) == "none"


@pytest.mark.parametrize(
    ("model", "provider", "last"),
    [
        # Anthropic: the partial answer is the final assistant message (its "prefill")
        ("fo-main", "alpha", {"role": "assistant", "content": "Once upon"}),
        # Gemini: the final turn is the model's
        ("fo-gemini", "delta", {"role": "model", "parts": [{"text": "Once upon"}]}),
        # OpenAI-compatible with a prefix flag (Mistral, DeepSeek)
        ("fo-prefix", "mistral", {"role": "assistant", "content": "Once upon", "prefix": True}),
    ],
)
def test_a_continuation_in_each_wire_format(model: str, provider: str, last: dict[str, Any]) -> None:
    d = dep(catalog(), model, provider)
    request = continuation_request(REQUEST, d, "Once upon ")  # trailing whitespace left out
    assert request is not None and request["max_tokens"] == 50 - 3
    body = orjson.loads(ADAPTERS[d.format].build_stream_request(request, d).body)
    turns = body.get("messages") or body.get("contents")
    assert turns[-1] == last


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({}, "   "),  # nothing but whitespace sent: nothing to go on from
        ({"n": 2}, "Once"),  # several choices
        ({"response_format": {"type": "json_object"}}, "{"),  # structured output
        ({"reasoning_effort": "high"}, "Once"),  # Anthropic's extended thinking refuses a prefill
        ({"max_tokens": 2}, "Once upon a time"),  # no output left to ask for
    ],
)
def test_a_request_a_prefill_would_change_is_not_continued(change: dict[str, Any], text: str) -> None:
    assert continuation_request({**REQUEST, **change}, dep(catalog(), "fo-main", "alpha"), text) is None


def test_openai_itself_cannot_continue() -> None:
    assert continuation_request(REQUEST, dep(catalog(), "fo-other", "gamma"), "Once") is None


def test_a_followed_stream_reserves_for_its_continuation() -> None:
    cat = catalog()
    costs = CostModel(cat)
    request = {**REQUEST, "stream": True}
    once = costs.worst_case(["fo-main", "fo-other"], demand_of(request, 100))
    assert followed_stream(request, interactive=True) and not followed_stream(request, interactive=False)
    assert not followed_stream(REQUEST, interactive=True)
    followed = demand_of(request, 100, interactive=True, continuations=1)
    assert followed.attempts == 2 and costs.worst_case(["fo-main", "fo-other"], followed) == 2 * once
    assert demand_of(request, 100, interactive=False).attempts == 1  # a bulk stream starts over
    assert demand_of(REQUEST, 100, interactive=True).attempts == 1  # nothing streamed, nothing continued
