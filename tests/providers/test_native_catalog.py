"""The catalog with its native providers: 70+ models in every promised family, direct Anthropic and
Gemini deployments first, keys from ANTHROPIC_API_KEY and GEMINI_API_KEY (or GOOGLE_API_KEY)."""

from __future__ import annotations

from collections import Counter

import pytest

from config.catalog import Catalog
from config.settings import DEFAULT_CATALOG

FAMILIES = {"GPT", "Claude", "Gemini", "Grok", "Llama", "Mistral", "DeepSeek", "Qwen"}


def test_at_least_70_models_in_every_promised_family(sim_catalog: Catalog) -> None:
    assert len(sim_catalog.models) >= 70
    families = Counter(m.family for m in sim_catalog.models.values())
    assert set(families) == FAMILIES
    assert all(n >= 5 for n in families.values()), families


def test_every_model_has_capabilities_fallbacks_and_a_gateway_deployment(sim_catalog: Catalog) -> None:
    for model_id, spec in sim_catalog.models.items():
        caps = spec.capabilities
        assert caps.context_window >= 8192 and 1024 <= caps.max_output <= caps.context_window, model_id
        assert spec.fallbacks, model_id
        providers = [d.provider for d in spec.deployments]
        assert {"aisa", "openrouter"} & set(providers), model_id


@pytest.mark.parametrize(
    ("model", "provider", "url", "upstream"),
    [
        ("claude-sonnet-4-5", "anthropic", "https://api.anthropic.com", "claude-sonnet-4-5"),
        ("claude-opus-4", "anthropic", "https://api.anthropic.com", "claude-opus-4-0"),
        ("gemini-2.5-pro", "gemini", "https://generativelanguage.googleapis.com", "gemini-2.5-pro"),
    ],
)
def test_direct_providers_come_first_with_their_format_and_headers(
    model: str, provider: str, url: str, upstream: str
) -> None:
    catalog = Catalog.from_path(
        DEFAULT_CATALOG, env={"ANTHROPIC_API_KEY": "a", "GEMINI_API_KEY": "g", "AISA_API_KEY": "s"}
    )
    first, second = catalog.deployments(model)[:2]
    assert (first.provider, first.format, first.base_url, first.upstream_model) == (
        provider,
        provider,
        url,
        upstream,
    )
    assert second.provider == "aisa"
    if provider == "anthropic":
        assert first.headers == {"anthropic-version": "2023-06-01"}
        assert first.max_output == catalog.models[model].capabilities.max_output  # the default max_tokens


def test_google_api_key_is_accepted_for_gemini() -> None:
    catalog = Catalog.from_path(DEFAULT_CATALOG, env={"GOOGLE_API_KEY": "from-google"})
    (dep,) = catalog.deployments("gemini-2.5-flash")
    assert (dep.provider, dep.api_key) == ("gemini", "from-google")
    both = Catalog.from_path(DEFAULT_CATALOG, env={"GOOGLE_API_KEY": "g", "GEMINI_API_KEY": "preferred"})
    assert both.deployments("gemini-2.5-flash")[0].api_key == "preferred"


def test_upstream_replaces_the_native_origins_too() -> None:
    catalog = Catalog.from_path(
        DEFAULT_CATALOG,
        env={"ANTHROPIC_API_KEY": "a", "GEMINI_API_KEY": "g"},
        upstream="http://127.0.0.1:9000",
    )
    assert catalog.deployments("claude-haiku-4-5")[0].base_url == "http://127.0.0.1:9000"
    assert catalog.deployments("gemini-2.5-flash")[0].base_url == "http://127.0.0.1:9000"


def test_claude_models_that_refuse_sampling_parameters_get_their_dialect(sim_catalog: Catalog) -> None:
    dialects = {
        m: sim_catalog.deployments(m, enabled_only=False)[0].dialect
        for m in (
            "claude-sonnet-4-5",
            "claude-opus-4-6",
            "claude-opus-4-7",
            "claude-opus-5",
            "claude-sonnet-5",
        )
    }
    assert dialects == {
        "claude-sonnet-4-5": "",
        "claude-opus-4-6": "",
        "claude-opus-4-7": "anthropic-reasoning",
        "claude-opus-5": "anthropic-reasoning",
        "claude-sonnet-5": "anthropic-reasoning",
    }
