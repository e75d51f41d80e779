"""The `lane` request field, its defaults (setting, tenant policy), `service_tier: "flex"`, and lane
prices from the catalog."""

from __future__ import annotations

import time

import pytest

from config.catalog import Catalog
from config.cost import call_usage
from config.settings import Settings
from llm_router.errors import InvalidRequest
from llm_router.tenants import TenantPolicies
from producer.validation import Validator

JOB = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


@pytest.fixture
def validator(sim_catalog: Catalog) -> Validator:
    return Validator(sim_catalog, Settings(_env_file=None))


@pytest.mark.parametrize("lane", ["now", "flex", "batch", "auto"])
def test_each_lane_is_accepted(validator: Validator, lane: str) -> None:
    assert validator.prepare({**JOB, "lane": lane}, now=time.time()).lane == lane


def test_an_unknown_lane_names_the_field(validator: Validator) -> None:
    with pytest.raises(InvalidRequest) as err:
        validator.prepare({**JOB, "lane": "cheap"}, now=time.time())
    assert err.value.param == "lane" and err.value.status == 400


def test_service_tier_flex_is_the_flex_lane(validator: Validator) -> None:
    assert validator.prepare({**JOB, "service_tier": "flex"}, now=time.time()).lane == "flex"
    assert validator.prepare({**JOB, "service_tier": "flex", "lane": "flex"}, now=time.time()).lane == "flex"
    with pytest.raises(InvalidRequest) as err:
        validator.prepare({**JOB, "service_tier": "flex", "lane": "batch"}, now=time.time())
    assert err.value.param == "lane" and "flex" in err.value.message


def test_streamed_and_interactive_jobs_never_go_to_batch(validator: Validator) -> None:
    with pytest.raises(InvalidRequest) as err:
        validator.prepare({**JOB, "lane": "batch", "stream": True}, now=time.time())
    assert err.value.param == "lane"
    with pytest.raises(InvalidRequest):
        validator.prepare({**JOB, "lane": "batch"}, now=time.time(), interactive=True)
    # interactive jobs run now unless they ask otherwise; submitted ones leave it to the tenant
    assert validator.prepare(JOB, now=time.time(), interactive=True).lane == "now"
    assert validator.prepare(JOB, now=time.time()).lane is None


def test_lane_is_never_sent_upstream() -> None:
    from llm_router.contract import RESERVED_KEYS

    assert "lane" in RESERVED_KEYS


def test_lane_prices_are_the_discounted_price(sim_catalog: Catalog) -> None:
    dep = sim_catalog.deployments("gpt-4o-mini")[0]
    assert dep.lanes is not None and dep.lanes.batch is not None and dep.lanes.flex is not None
    now = call_usage(dep.price_for("now"), 1000, 1000)["cost_nanos"]
    assert call_usage(dep.price_for("batch"), 1000, 1000)["cost_nanos"] == now // 2
    assert call_usage(dep.price_for("flex"), 1000, 1000)["cost_nanos"] == now // 2
    claude = sim_catalog.deployments("claude-sonnet-4-5")[0]  # Anthropic's Message Batches
    assert (
        claude.lanes is not None and claude.lanes.batch is not None and claude.lanes.batch.api == "anthropic"
    )
    assert (
        call_usage(claude.price_for("batch"), 1000, 1000)["cost_nanos"] * 2
        == call_usage(claude.price, 1000, 1000)["cost_nanos"]
    )
    other = next(d for d in sim_catalog.deployments("claude-sonnet-4-5") if d.provider == "openrouter")
    assert other.price_for("batch") is other.price  # a lane not offered costs what `now` costs


async def test_record_carries_the_lane_and_tenant_default(producer, redis, settings: Settings) -> None:
    policies = TenantPolicies(redis, settings)
    await policies.set("lanes-t1", {"default_lane": "auto"})
    with pytest.raises(InvalidRequest):
        await policies.set("lanes-t1", {"default_lane": "slow"})
    explicit = await producer.submit({**JOB, "lane": "batch"}, tenant="lanes-t1")
    defaulted = await producer.submit(JOB, tenant="lanes-t1")
    plain = await producer.submit(JOB, tenant="lanes-t2")
    assert (await producer.get(explicit.job_id, tenant="lanes-t1")).lane == "batch"
    assert (await producer.get(defaulted.job_id, tenant="lanes-t1")).lane == "auto"
    assert (await producer.get(plain.job_id, tenant="lanes-t2")).lane == "now"


def test_reservation_is_at_the_now_price(validator: Validator) -> None:
    # a batch job can always be sent back to `now`: it reserves what `now` would cost
    # (the lane's own bytes count in the prompt estimate: a token or two)
    now = validator.prepare({**JOB, "lane": "now"}, now=time.time()).reserve_nanos
    for lane in ("flex", "batch", "auto"):
        reserved = validator.prepare({**JOB, "lane": lane}, now=time.time()).reserve_nanos
        assert now <= reserved < now * 1.05
