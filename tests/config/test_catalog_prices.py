"""The catalog: models the product names, aliases, enabling by key, origins, and prices vs genai-prices."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from genai_prices import Usage, calc_price

from config.catalog import Catalog, replace_origin
from config.settings import DEFAULT_CATALOG

PRODUCT_MODELS = [
    "gpt-5.2",
    "gpt-5",
    "gpt-5-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-4o-mini",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-opus-4",
    "claude-sonnet-4",
    "claude-haiku-4-5",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "grok-4",
    "grok-3",
    "llama-3.1-405b",
    "llama-3.1-70b",
    "llama-3.1-8b",
    "mistral-large",
    "mistral-medium",
    "mixtral-8x7b",
    "o1",
    "gpt-3.5-turbo",
]


def test_catalog_has_every_product_model_and_its_aliases(sim_catalog: Catalog) -> None:
    assert set(PRODUCT_MODELS) <= set(sim_catalog.models)
    assert sim_catalog.resolve("claude-3-sonnet") == "claude-sonnet-4"
    assert sim_catalog.resolve("gemini-2.0-flash") == "gemini-2.5-flash"
    assert sim_catalog.resolve("grok-2") == "grok-3"
    assert sim_catalog.resolve("nope") is None


def test_only_aisa_key_runs_every_model_through_aisa() -> None:
    catalog = Catalog.from_path(DEFAULT_CATALOG, env={"AISA_API_KEY": "k"})
    for model in PRODUCT_MODELS:
        deps = catalog.deployments(model)
        assert [d.provider for d in deps] == ["aisa"], model
        assert deps[0].base_url == "https://api.aisa.one/v1"


def test_no_key_no_deployment_and_local_needs_its_base_url() -> None:
    assert Catalog.from_path(DEFAULT_CATALOG, env={}).deployments("gpt-4o") == []
    local = Catalog.from_path(DEFAULT_CATALOG, env={"LOCAL_OPENAI_BASE_URL": "http://gpu:8000/v1"})
    deps = local.deployments("llama-3.1-70b")
    assert [d.provider for d in deps] == ["local"] and deps[0].base_url == "http://gpu:8000/v1"
    assert deps[0].price.cost_nanos(1000, 1000) == 0


@pytest.mark.parametrize(
    ("url", "upstream", "expected"),
    [
        ("https://api.aisa.one/v1", "http://127.0.0.1:9000", "http://127.0.0.1:9000/v1"),
        ("https://openrouter.ai/api/v1", "http://127.0.0.1:9000", "http://127.0.0.1:9000/api/v1"),
        ("https://api.openai.com/v1", None, "https://api.openai.com/v1"),
    ],
)
def test_upstream_replaces_origin_keeps_path(url: str, upstream: str | None, expected: str) -> None:
    assert replace_origin(url, upstream) == expected


def test_every_priced_deployment_has_a_source_and_a_nonzero_price(sim_catalog: Catalog) -> None:
    for model in sim_catalog.models:
        for dep in sim_catalog.deployments(model, enabled_only=False):
            if dep.provider == "local":
                continue
            assert dep.price.source.startswith(("genai-prices:", "catalog:")), dep
            assert dep.price.tiers[0].input > 0 and dep.price.tiers[0].output > 0, dep


@pytest.mark.parametrize(("prompt", "completion"), [(1, 1), (1234, 567), (150_000, 4000), (250_000, 8000)])
def test_cost_matches_genai_prices_to_the_nano_dollar(
    sim_catalog: Catalog, prompt: int, completion: int
) -> None:
    checked = 0
    for model in sim_catalog.models:
        for dep in sim_catalog.deployments(model, enabled_only=False):
            source = dep.price.source
            if not source.startswith("genai-prices:"):
                continue
            provider, _, ref = source.removeprefix("genai-prices:").partition("/")
            expected = calc_price(
                Usage(input_tokens=prompt, output_tokens=completion), ref, provider_id=provider
            )
            want = int((expected.total_price * 10**9).quantize(Decimal(1), rounding=ROUND_HALF_UP))
            assert dep.price.cost_nanos(prompt, completion) == want, (dep.id, prompt, completion)
            checked += 1
    assert checked > 50


def test_tiered_price_applies_above_the_threshold(sim_catalog: Catalog) -> None:
    dep = next(
        d for d in sim_catalog.deployments("claude-sonnet-4-5", enabled_only=False) if d.provider == "aisa"
    )
    assert len(dep.price.tiers) == 2
    below = dep.price.cost_nanos(200_000, 0)
    above = dep.price.cost_nanos(200_001, 0)
    assert below == 200_000 * 3000  # $3 per 1M tokens is 3,000 nano-dollars a token
    assert above == 200_001 * 6000  # past the tier every token pays $6 per 1M
