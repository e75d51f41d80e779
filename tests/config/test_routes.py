"""Routes and estimates, pure: which model a route picks and what a job may cost, without I/O."""

from __future__ import annotations

import collections

import pytest
import yaml
from pydantic import ValidationError

from config.catalog import Catalog, CatalogFile
from config.cost import Demand
from config.routes import Need, NoCapableModel, RouteSpec, choose
from config.settings import DEFAULT_CATALOG, Settings
from producer.validation import Validator

TEXT = Need(prompt_tokens=100, max_output=None, vision=False, tools=False, stream=False)


def _always(_m: str, _n: Need) -> bool:
    return True


def test_size_rules_take_the_first_that_fits() -> None:
    spec = RouteSpec(kind="size", rules=[{"max_prompt_tokens": 50, "model": "a"}, {"model": "b"}])
    small = Need(50, None, False, False, False)
    assert choose("s", spec, small, "j", _always, lambda m, n: 0).model == "a"
    big = choose("s", spec, TEXT, "j", _always, lambda m, n: 0)
    assert big.model == "b" and big.rule == "s: prompt ~100 tokens (rest) → b"


def test_weighted_splits_follow_the_weights_and_a_job_id_always_lands_on_one_side() -> None:
    spec = RouteSpec(kind="weighted", split={"a": 80, "b": 20})
    picks = collections.Counter(
        choose("w", spec, TEXT, f"job-{i}", _always, lambda m, n: 0).model for i in range(5000)
    )
    assert 0.77 < picks["a"] / 5000 < 0.83
    assert {choose("w", spec, TEXT, "same", _always, lambda m, n: 0).model for _ in range(20)} == {
        choose("w", spec, TEXT, "same", _always, lambda m, n: 0).model
    }


def test_auto_takes_the_cheapest_capable_model() -> None:
    spec = RouteSpec(kind="auto", models=["cheap-text", "mid-vision", "dear-vision"])
    cost = {"cheap-text": 1, "mid-vision": 5, "dear-vision": 9}
    vision = {"mid-vision", "dear-vision"}

    def capable(m: str, n: Need) -> bool:
        return m in vision or not n.vision

    assert choose("auto", spec, TEXT, "j", capable, lambda m, n: cost[m]).model == "cheap-text"
    seeing = Need(100, None, True, False, False)
    chosen = choose("auto", spec, seeing, "j", capable, lambda m, n: cost[m])
    assert chosen.model == "mid-vision" and chosen.rule == "auto: cheapest of 2 capable → mid-vision"
    with pytest.raises(NoCapableModel, match="needs vision"):
        choose("auto", spec, seeing, "j", lambda m, n: False, lambda m, n: 0)


def test_the_catalog_refuses_routes_that_name_unknown_models_or_shadow_models() -> None:
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    raw["routes"]["typo"] = {"kind": "fixed", "model": "gpt-4.11"}
    with pytest.raises(ValidationError, match=r"routes\.typo: unknown model 'gpt-4\.11'"):
        CatalogFile.model_validate(raw)
    raw["routes"].pop("typo")
    raw["routes"]["gpt-4o"] = {"kind": "fixed", "model": "gpt-4.1"}
    with pytest.raises(ValidationError, match="already a model or alias"):
        CatalogFile.model_validate(raw)
    with pytest.raises(ValidationError, match="last rule"):
        RouteSpec(kind="size", rules=[{"max_prompt_tokens": 5, "model": "a"}])


def test_auto_respects_the_context_window_of_a_long_prompt(tmp_path) -> None:
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    raw["routes"]["auto"]["models"] = ["gpt-4o-mini", "gemini-2.5-pro"]  # 128k and 1M windows
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    catalog = Catalog.from_path(path, env={"AISA_API_KEY": "k"})
    validator = Validator(catalog, Settings(_env_file=None))
    short = validator.prepare({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}, now=0)
    huge = "word " * 200_000  # ~250k tokens: past a 128k window
    long = validator.prepare({"model": "auto", "messages": [{"role": "user", "content": huge}]}, now=0)
    assert short.route[0] == "gpt-4o-mini"  # the cheaper one while the prompt fits
    assert long.route[0] == "gemini-2.5-pro"
    assert catalog.models["gpt-4o-mini"].capabilities.context_window < long.prompt_tokens


def test_the_reservation_is_the_worst_case_of_the_whole_chain() -> None:
    catalog = Catalog.load(Settings(_env_file=None), env={"AISA_API_KEY": "k", "OPENAI_API_KEY": "k"})
    validator = Validator(catalog, Settings(_env_file=None))
    job = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    alone = validator.prepare({**job, "fallbacks": []}, now=0)
    chained = validator.prepare({**job, "fallbacks": ["claude-opus-4-1"]}, now=0)
    opus = validator.prepare({**job, "model": "claude-opus-4-1", "fallbacks": []}, now=0)
    assert alone.reserve_nanos < opus.reserve_nanos <= chained.reserve_nanos
    # the chain's dearest model prices the reservation
    assert chained.reserve_nanos == validator.costs.worst_case(
        ["claude-opus-4-1"], Demand(chained.prompt_tokens, 1000)
    )
    # no max_tokens: the model's whole output is reserved
    open_ended = validator.prepare({**job, "max_tokens": None, "fallbacks": []}, now=0)
    assert open_ended.reserve_nanos > alone.reserve_nanos
