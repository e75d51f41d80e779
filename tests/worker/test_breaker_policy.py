"""The worker's side of breakers: policies from settings and catalog, report kinds, the retry budget."""

from __future__ import annotations

from dataclasses import replace

import orjson

from config.catalog import BreakerSpec, Catalog, ConcurrencySpec
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
        "conc_initial",
        "conc_max",
        "backoff_pct",
        "tolerance_pct",
        "quantile_pct",
    }
    assert (report["slot"], report["latency_ms"], report["started_ms"]) == (True, -1, 0)
    assert 80 <= report["jitter_pct"] <= 120  # cooldowns of many deployments must not end in step


def test_the_concurrency_limit_takes_settings_and_the_catalog_block(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o")[0]
    settings = Settings(_env_file=None, concurrency_initial=6, concurrency_max=50, concurrency_backoff=0.8)
    base = Policy.for_deployment(dep, settings)
    assert (base.conc_initial, base.conc_max, base.backoff_pct, base.limited) == (6, 50, 80, True)
    tuned = Policy.for_deployment(replace(dep, concurrency=ConcurrencySpec(initial=80, max=64)), settings)
    assert (tuned.conc_initial, tuned.conc_max) == (64, 64)  # initial never above max
    off = Policy.for_deployment(replace(dep, concurrency=ConcurrencySpec(max=0)), settings)
    assert not off.limited and off.conc_initial == 0


def test_routing_table_lists_enabled_deployments_in_order(sim_catalog: Catalog) -> None:
    key, table = routing_table(sim_catalog, Settings(_env_file=None))
    assert key.startswith("llm-router:routing:")
    strategy, first, *_ = table["gpt-4o"].split(";")
    assert (strategy, first) == ("ordered", f"{sim_catalog.deployments('gpt-4o')[0].id}|0|0|1|10|1000|1")
    assert routing_table(sim_catalog, Settings(_env_file=None))[0] == key  # the same config, the same key


def test_a_cost_models_deployments_are_listed_cheapest_first(tmp_path) -> None:
    catalog_yaml = tmp_path / "c.yaml"
    catalog_yaml.write_text(
        """
providers:
  a: {base_url: "http://a.invalid/v1", key_env: A_KEY}
  b: {base_url: "http://b.invalid/v1", key_env: B_KEY}
  c: {base_url: "http://c.invalid/v1", key_env: C_KEY}
models:
  m:
    vendor: x
    strategy: cost
    deployments:
    - {provider: a, model: m, price: {input: 3, output: 15}}
    - {provider: b, model: m, price: {input: 1, output: 4}}
    - {provider: c, model: m, price: {input: 2, output: 8}, weight: 4}
"""
    )
    cat = Catalog.from_path(catalog_yaml, env={"A_KEY": "a", "B_KEY": "b", "C_KEY": "c"})
    _, table = routing_table(cat, Settings(_env_file=None))
    # blended 3:1 and divided by the weight: c (1.25 / 4) before b (1.75) before a (6)
    assert [e.split("|")[0] for e in table["m"].split(";")[1:]] == ["c/m", "b/m", "a/m"]
    assert table["m"].startswith("cost;c/m|0|0|1|10|1000|4;")


def test_retry_budget_caps_retries_at_a_share_of_calls() -> None:
    budget = RetryBudget(0.2)
    for _ in range(50):
        budget.call()
    allowed = sum(budget.allow_retry() for _ in range(100))
    assert allowed == 11  # 20 % of 50 calls, plus the one always allowed
