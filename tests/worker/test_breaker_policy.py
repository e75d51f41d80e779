"""The worker's side of breakers: policies from settings and catalog, outcomes, the retry budget."""

from __future__ import annotations

from dataclasses import replace

from config.catalog import BreakerSpec, Catalog
from config.settings import Settings
from llm_router.errors import AuthFailed, Overloaded, RateLimited, UpstreamInvalidRequest
from worker.breaker import Policy, RetryBudget, estimate_tokens, outcome, outcome_kind, routing_table


def test_policy_takes_settings_and_lets_the_catalog_override(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o")[0]
    settings = Settings(_env_file=None, breaker_consecutive=7, breaker_cooldown_s=2.5)
    base = Policy.for_deployment(dep, settings)
    assert (base.consecutive, base.cooldown_ms, base.rate_pct) == (7, 2500, 50)
    tuned = Policy.for_deployment(replace(dep, breaker=BreakerSpec(consecutive=2, probes=3)), settings)
    assert (tuned.consecutive, tuned.probes, tuned.cooldown_ms) == (2, 3, 2500)


def test_outcome_kinds_follow_the_taxonomy() -> None:
    assert outcome_kind(None) == "s"
    assert outcome_kind(Overloaded("x")) == "f"
    assert outcome_kind(RateLimited("x")) == "l"
    assert outcome_kind(AuthFailed("x")) == "d"
    assert outcome_kind(UpstreamInvalidRequest("x")) == "n"


def test_outcome_line_has_the_fifteen_fields_the_lua_reads(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o")[0]
    line = outcome(dep, "f", Policy.for_deployment(dep, Settings(_env_file=None)), probe=True, until_ms=5)
    fields = line.split("|")
    assert len(fields) == 15 and fields[:4] == [dep.id, "f", "1", "5"]
    assert 80 <= int(fields[13]) <= 120  # cooldown jitter, percent


def test_routing_table_lists_enabled_deployments_in_order(sim_catalog: Catalog) -> None:
    key, table = routing_table(sim_catalog, Settings(_env_file=None))
    assert key.startswith("llm-router:routing:")
    assert table["gpt-4o"].split(";")[0] == f"{sim_catalog.deployments('gpt-4o')[0].id}|0|0|1"
    assert routing_table(sim_catalog, Settings(_env_file=None))[0] == key  # the same config, the same key


def test_token_estimate_counts_bytes_and_max_output() -> None:
    assert estimate_tokens(b'{"max_tokens":100,"model":"m"}') == 30 // 4 + 100
    assert estimate_tokens(b'{"max_completion_tokens":7,"max_tokens":100}') == 44 // 4 + 7


def test_retry_budget_caps_retries_at_a_share_of_calls() -> None:
    budget = RetryBudget(0.2)
    for _ in range(50):
        budget.call()
    allowed = sum(budget.allow_retry() for _ in range(100))
    assert allowed == 11  # 20 % of 50 calls, plus the one always allowed
