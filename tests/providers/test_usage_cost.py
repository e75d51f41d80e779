"""Cost of every usage shape, to 1e-9 USD, against ``genai_prices.calc_price`` on the same usage.

Each case is a vendor's answer as the adapter reads it (so the token split is the adapter's, not
the test's), priced with the shipped catalog's deployment, and compared with genai-prices given
the same counts (its ``input_tokens`` includes cache reads and writes). Tiers are crossed where
the model has them (Claude Sonnet 4.5 and Gemini 2.5 Pro above 200k input tokens).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import orjson
import pytest
from genai_prices import Usage, calc_price

from config.catalog import Catalog
from worker.providers import ADAPTERS
from worker.providers.base import Completion


def anthropic_body(fresh: int, written: int, read: int, output: int) -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": fresh,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "output_tokens": output,
        },
    }


def openai_body(prompt: int, cached: int, completion: int, reasoning: int) -> dict:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def gemini_body(prompt: int, cached: int, candidates: int, thoughts: int) -> dict:
    usage = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates + thoughts,
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP", "index": 0}
        ],
        "usageMetadata": usage,
    }


# (model, provider, vendor body, expected split: prompt, completion, cached, written, reasoning)
SHAPES = [
    (
        "claude-sonnet-4-5",
        "anthropic",
        anthropic_body(1_000, 3_000, 20_000, 500),
        (24_000, 500, 20_000, 3_000, 0),
    ),
    ("claude-sonnet-4-5", "anthropic", anthropic_body(150_000, 60_000, 0, 800), (210_000, 800, 0, 60_000, 0)),
    ("claude-sonnet-4-5", "anthropic", anthropic_body(5_000, 0, 230_000, 900), (235_000, 900, 230_000, 0, 0)),
    ("claude-haiku-4-5", "anthropic", anthropic_body(7, 4_096, 0, 33), (4_103, 33, 0, 4_096, 0)),
    ("claude-opus-4-1", "anthropic", anthropic_body(12, 0, 9_000, 4_000), (9_012, 4_000, 9_000, 0, 0)),
    ("claude-sonnet-4-5", "openrouter", openai_body(30_000, 10_000, 700, 0), (30_000, 700, 10_000, 0, 0)),
    ("gpt-5", "openai", openai_body(12_000, 8_192, 3_000, 2_048), (12_000, 3_000, 8_192, 0, 2_048)),
    ("gpt-4o", "openai", openai_body(2_000, 1_024, 100, 0), (2_000, 100, 1_024, 0, 0)),
    ("o1", "openai", openai_body(500, 0, 9_000, 8_500), (500, 9_000, 0, 0, 8_500)),
    (
        "gemini-2.5-pro",
        "gemini",
        gemini_body(40_000, 32_000, 1_000, 4_000),
        (40_000, 5_000, 32_000, 0, 4_000),
    ),
    ("gemini-2.5-pro", "gemini", gemini_body(250_000, 0, 2_000, 6_000), (250_000, 8_000, 0, 0, 6_000)),
    ("gemini-2.5-flash", "gemini", gemini_body(3_000, 2_048, 200, 1_500), (3_000, 1_700, 2_048, 0, 1_500)),
    (
        "gemini-3-pro-preview",
        "gemini",
        gemini_body(210_000, 150_000, 300, 700),
        (210_000, 1_000, 150_000, 0, 700),
    ),
    ("grok-4", "xai", openai_body(4_000, 3_000, 600, 400), (4_000, 600, 3_000, 0, 400)),
]


@pytest.mark.parametrize(("model", "provider", "body", "split"), SHAPES)
def test_cost_of_each_usage_shape_matches_genai_prices(
    sim_catalog: Catalog, model: str, provider: str, body: dict, split: tuple
) -> None:
    dep = next(d for d in sim_catalog.deployments(model, enabled_only=False) if d.provider == provider)
    done: Completion = ADAPTERS[dep.format].parse_response(200, {}, orjson.dumps(body), {"model": model})
    got = (
        done.prompt_tokens,
        done.completion_tokens,
        done.cached_tokens,
        done.cache_write_tokens,
        done.reasoning_tokens,
    )
    assert got == split
    nanos = dep.price.cost_nanos(
        done.prompt_tokens, done.completion_tokens, done.cached_tokens, done.cache_write_tokens
    )
    source = dep.price.source
    assert source.startswith("genai-prices:"), source
    provider_id, _, ref = source.removeprefix("genai-prices:").partition("/")
    usage = Usage(
        input_tokens=done.prompt_tokens,
        cache_read_tokens=done.cached_tokens,
        cache_write_tokens=done.cache_write_tokens,
        output_tokens=done.completion_tokens,
    )
    want = calc_price(usage, ref, provider_id=provider_id).total_price
    assert nanos == int((want * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP)), (nanos, want)
    assert nanos > 0


def test_cached_and_written_tokens_are_not_priced_as_fresh_input(sim_catalog: Catalog) -> None:
    """The commonest gateway bug: cached tokens billed at the full input rate, or twice."""
    dep = next(d for d in sim_catalog.deployments("claude-sonnet-4-5") if d.provider == "anthropic")
    all_fresh = dep.price.cost_nanos(100_000, 0)
    all_read = dep.price.cost_nanos(100_000, 0, cached_tokens=100_000)
    all_written = dep.price.cost_nanos(100_000, 0, cache_write_tokens=100_000)
    assert (all_fresh, all_read, all_written) == (300_000_000, 30_000_000, 375_000_000)
