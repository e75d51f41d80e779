"""The worker's side of breakers: policies from settings and catalog, report kinds, the retry budget."""

from __future__ import annotations

from dataclasses import replace

import orjson

from config.catalog import BreakerSpec, Catalog
from config.settings import Settings
from llm_router.circuit_breaker import Policy, ReportKind, breaker_report
from llm_router.errors import AuthFailed, Overloaded, RateLimited, UpstreamInvalidRequest
from worker.breaker import RetryBudget, report_kind, routing_table


def test_policy_takes_settings_and_lets_the_catalog_override(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o")[0]
    settings = Settings(_env_file=None, breaker_consecutive=7, breaker_cooldown_s=2.5)
    base = Policy.for_deployment(dep, settings)
    assert (base.consecutive, base.cooldown_ms, base.rate_pct) == (7, 2500, 50)
    tuned = Policy.for_deployment(replace(dep, breaker=BreakerSpec(consecutive=2, probes=3)), settings)
    assert (tuned.consecutive, tuned.probes, tuned.cooldown_ms) == (2, 3, 2500)


def test_report_kinds_follow_the_taxonomy() -> None:
    assert report_kind(None) == ReportKind.SUCCESS
    assert report_kind(Overloaded("x")) == ReportKind.FAILURE
    assert report_kind(RateLimited("x")) == ReportKind.LIMITED
    assert report_kind(AuthFailed("x")) == ReportKind.DISABLED
    assert report_kind(UpstreamInvalidRequest("x")) == ReportKind.NEUTRAL


def test_a_report_names_every_field_the_lua_reads(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o")[0]
    policy = Policy.for_deployment(dep, Settings(_env_file=None))
    report = orjson.loads(breaker_report(dep, ReportKind.FAILURE, policy, probe=True, until_ms=5).encode())
    assert (report["dep"], report["kind"], report["probe"], report["until_ms"]) == (
        dep.id,
        "failure",
        True,
        5,
    )
    assert set(report["policy"]) == {
        "window_ms",
        "bucket_ms",
        "rate_pct",
        "min_calls",
        "consecutive",
        "cooldown_ms",
        "max_cooldown_ms",
        "probes",
    }
    assert 80 <= report["jitter_pct"] <= 120  # cooldowns of many deployments must not end in step


def test_routing_table_lists_enabled_deployments_in_order(sim_catalog: Catalog) -> None:
    key, table = routing_table(sim_catalog, Settings(_env_file=None))
    assert key.startswith("llm-router:routing:")
    assert table["gpt-4o"].split(";")[0] == f"{sim_catalog.deployments('gpt-4o')[0].id}|0|0|1"
    assert routing_table(sim_catalog, Settings(_env_file=None))[0] == key  # the same config, the same key


def test_retry_budget_caps_retries_at_a_share_of_calls() -> None:
    budget = RetryBudget(0.2)
    for _ in range(50):
        budget.call()
    allowed = sum(budget.allow_retry() for _ in range(100))
    assert allowed == 11  # 20 % of 50 calls, plus the one always allowed
