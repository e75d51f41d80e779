"""The batch formats as pure translation, without a network: a job's item is the body the
synchronous adapter would send; a batch's state maps onto ours; an item's answer is parsed and its
error classified by the deployment's own adapter; usage (cache and thinking tokens) is priced at the
batch discount."""

from __future__ import annotations

import orjson
import pytest

from config.cost import call_usage
from llm_router.errors import BadResponse, Overloaded, RateLimited, UpstreamError, UpstreamInvalidRequest
from worker.batch_formats import anthropic, gemini, openai, to_result
from worker.batch_formats.base import CANCELLED, COMPLETED, EXPIRED, RUNNING, Remote
from worker.providers import ADAPTERS

REQ = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def _dep(sim_catalog, model: str, provider: str):
    return next(d for d in sim_catalog.deployments(model) if d.provider == provider)


def test_items_are_the_synchronous_bodies(sim_catalog) -> None:
    oa = _dep(sim_catalog, "gpt-4o-mini", "openai")
    line = orjson.loads(openai.item("tenant/job-1", REQ, oa))
    assert line["custom_id"] == "tenant/job-1" and line["url"] == "/v1/chat/completions"
    assert line["body"] == orjson.loads(ADAPTERS["openai"].build_request(REQ, oa).body)

    an = _dep(sim_catalog, "claude-haiku-4-5", "anthropic")
    entry = orjson.loads(anthropic.item(anthropic.key(7, "tenant/job"), REQ, an))
    assert entry["custom_id"] == "r7"  # a job id may hold characters Anthropic refuses
    assert entry["params"] == orjson.loads(ADAPTERS["anthropic"].build_request(REQ, an).body)
    body = orjson.loads(anthropic.create_body([anthropic.item("r0", REQ, an), anthropic.item("r1", REQ, an)]))
    assert [r["custom_id"] for r in body["requests"]] == ["r0", "r1"]

    gm = _dep(sim_catalog, "gemini-2.5-flash", "gemini")
    entry = orjson.loads(gemini.item(gemini.key(3, "tenant/job"), REQ, gm))
    assert entry["metadata"] == {"key": "3"} and entry["request"]["model"] == "models/gemini-2.5-flash"
    sync = orjson.loads(ADAPTERS["gemini"].build_request(REQ, gm).body)
    assert {k: v for k, v in entry["request"].items() if k != "model"} == sync
    body = orjson.loads(gemini.create_body("ours", [gemini.item("0", REQ, gm)]))
    assert body["batch"]["displayName"] == "ours"
    assert len(body["batch"]["inputConfig"]["requests"]["requests"]) == 1


def test_remote_states_map_onto_ours() -> None:
    assert openai.parse_remote({"id": "b", "status": "finalizing"}).state == RUNNING
    assert openai.parse_remote({"id": "b", "status": "cancelling"}).cancelling
    assert openai.parse_remote({"id": "b", "status": "expired"}).state == EXPIRED

    ended = {"id": "m", "processing_status": "ended", "request_counts": {"expired": 0}, "results_url": "u"}
    assert anthropic.parse_remote(ended).state == COMPLETED and anthropic.parse_remote(ended).output == "u"
    assert anthropic.parse_remote({**ended, "request_counts": {"expired": 2}}).state == EXPIRED
    assert anthropic.parse_remote({**ended, "cancel_initiated_at": "2026-01-01T00:00:00Z"}).state == CANCELLED
    assert anthropic.parse_remote({"id": "m", "processing_status": "canceling"}).cancelling

    op = {"name": "batches/x", "metadata": {"state": "BATCH_STATE_RUNNING", "displayName": "ours"}}
    assert gemini.parse_remote(op).state == RUNNING and gemini.parse_remote(op).id == "batches/x"
    assert gemini.find({"operations": [op]}, "ours") is not None
    assert gemini.find({"operations": [op]}, "theirs") is None
    for state, ours in (("SUCCEEDED", COMPLETED), ("CANCELLED", CANCELLED), ("EXPIRED", EXPIRED)):
        assert (
            gemini.parse_remote({"name": "batches/x", "metadata": {"state": f"BATCH_STATE_{state}"}}).state
            == ours
        )


def test_anthropic_results_priced_at_the_batch_discount_with_cache_tokens(sim_catalog) -> None:
    dep = _dep(sim_catalog, "claude-haiku-4-5", "anthropic")
    usage = {
        "input_tokens": 100,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 3000,
        "output_tokens": 50,
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    lines = [
        {"custom_id": "r0", "result": {"type": "succeeded", "message": message}},
        {"custom_id": "r1", "result": {"type": "errored", "error": overloaded}},
        {"custom_id": "r2", "result": {"type": "expired"}},
        {"custom_id": "r3", "result": {"type": "canceled"}},
    ]
    items = anthropic.items(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    results = [to_result(i, REQ, ADAPTERS["anthropic"]) for i in items]
    done = results[0].completion
    assert done is not None and done.response["choices"][0]["message"]["content"] == "hi"
    assert (done.cached_tokens, done.cache_write_tokens, done.prompt_tokens) == (3000, 2000, 5100)
    now = call_usage(dep.price_for("now"), 5100, 50, cached_tokens=3000, cache_write_tokens=2000)
    batch = call_usage(dep.price_for("batch"), 5100, 50, cached_tokens=3000, cache_write_tokens=2000)
    assert batch["cost_nanos"] > 0 and abs(batch["cost_nanos"] * 2 - now["cost_nanos"]) <= 2
    assert isinstance(results[1].error, Overloaded) and "overloaded" in results[1].why
    assert results[2].completion is None and results[2].error is None and "expired" in results[2].why
    assert results[3].outcome == "canceled"


def test_anthropic_results_url_must_be_on_the_deployments_origin(sim_catalog) -> None:
    dep = _dep(sim_catalog, "claude-haiku-4-5", "anthropic")
    ours = Remote("m", COMPLETED, output=f"{dep.base_url}/v1/messages/batches/m/results")
    assert anthropic.results_url(ours, dep) == ours.output
    with pytest.raises(BadResponse):
        anthropic.results_url(Remote("m", COMPLETED, output="https://evil.example/steal"), dep)


def test_gemini_inline_responses_with_thinking_and_errors(sim_catalog) -> None:
    dep = _dep(sim_catalog, "gemini-2.5-flash", "gemini")
    response = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 1500,
            "candidatesTokenCount": 10,
            "thoughtsTokenCount": 40,
            "cachedContentTokenCount": 1024,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    output = {
        "inlinedResponses": {
            "inlinedResponses": [
                {"response": response, "metadata": {"key": "0"}},
                {"error": {"code": 8, "message": "Resource has been exhausted"}},
                {"error": {"code": 3, "message": "Invalid argument"}},
                {"error": {"code": 13, "message": "Internal error"}},
            ]
        }
    }
    remote = gemini.parse_remote(
        {"name": "batches/x", "metadata": {"state": "BATCH_STATE_SUCCEEDED", "output": output}, "done": True}
    )
    items = gemini.items(remote)
    assert [i.key for i in items] == ["0", "1", "2", "3"]  # the position, when metadata is not echoed
    results = [to_result(i, REQ, ADAPTERS["gemini"]) for i in items]
    done = results[0].completion
    assert done is not None
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens, done.reasoning_tokens) == (
        1500,
        50,
        1024,
        40,
    )
    now = call_usage(dep.price_for("now"), 1500, 50, cached_tokens=1024, reasoning_tokens=40)
    batch = call_usage(dep.price_for("batch"), 1500, 50, cached_tokens=1024, reasoning_tokens=40)
    assert batch["cost_nanos"] > 0 and abs(batch["cost_nanos"] * 2 - now["cost_nanos"]) <= 2
    assert isinstance(results[1].error, RateLimited)
    assert isinstance(results[2].error, UpstreamInvalidRequest)
    assert isinstance(results[3].error, UpstreamError)
    # the same output under the operation's response (the REST form) reads the same
    alt = gemini.parse_remote(
        {"name": "batches/x", "metadata": {"state": "BATCH_STATE_SUCCEEDED"}, "response": output}
    )
    assert [i.key for i in gemini.items(alt)] == ["0", "1", "2", "3"]


def test_openai_error_lines_are_classified_or_not_run() -> None:
    lines = [
        {
            "custom_id": "a",
            "response": {"status_code": 429, "body": {"error": {"message": "slow down", "type": "requests"}}},
        },
        {"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "expired"}},
        {"custom_id": "c", "response": None, "error": {"code": "batch_cancelled", "message": "cancelled"}},
    ]
    items = openai.items(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    results = [to_result(i, REQ, ADAPTERS["openai"]) for i in items]
    assert isinstance(results[0].error, RateLimited)
    assert [r.outcome for r in results[1:]] == ["expired", "canceled"]


def test_a_batch_lane_speaks_its_deployments_format(tmp_path) -> None:
    from pathlib import Path

    import yaml

    from config.catalog import Catalog, CatalogError
    from config.settings import DEFAULT_CATALOG
    from llm_router.testing.sim_env import SIM_KEYS

    raw = yaml.safe_load(Path(DEFAULT_CATALOG).read_text())
    raw["providers"]["anthropic"]["lanes"]["batch"]["api"] = "openai"
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CatalogError, match=r"lanes\.batch\.api"):
        Catalog.from_path(path, env=SIM_KEYS).deployments("claude-haiku-4-5")
