"""One prompt, three fronts, one job path: a chat completion, a Response and a Message for the same
prompt on the same model are the same job underneath, so their records carry the same tokens and the
same cost, and a metered tenant's ledger settles each exactly once (nothing left reserved)."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import pytest
import redis as sync_redis
import requests

from config.cost import NANOS_PER_USD
from llm_router.keys import credits_key
from tests.http.test_openai_api import add_credits

PROMPT = "Name three rivers."
SYSTEM = "Answer in one line."
MAX_TOKENS = 40
CREDIT_USD = 5


MODELS = ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"]


def _three_fronts(api: Any, tenant: str, model: str) -> tuple[list[dict[str, Any]], list[float]]:
    """The prompt through each front; the three records, and the cost each front showed."""
    chat = api.openai(tenant).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        max_tokens=MAX_TOKENS,
    )
    response = api.openai(tenant).responses.create(
        model=model, instructions=SYSTEM, input=PROMPT, max_output_tokens=MAX_TOKENS
    )
    message = anthropic.Anthropic(
        base_url=api.url, api_key=api.key_for(tenant), max_retries=0
    ).messages.create(
        model=model, system=SYSTEM, messages=[{"role": "user", "content": PROMPT}], max_tokens=MAX_TOKENS
    )
    ids = [chat.headers["x-llm-router-job-id"], response.id, message.id]
    records = [
        requests.get(f"{api.url}/v1/jobs/{job_id}", headers=api.headers(tenant), timeout=30).json()
        for job_id in ids
    ]
    text = chat.parse()
    tokens = records[0]["usage"]["prompt_tokens"], records[0]["usage"]["completion_tokens"]
    # each front shows the record's numbers in its own terms
    assert (text.usage.prompt_tokens, text.usage.completion_tokens) == tokens
    assert (
        response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == tokens
    )
    cached = message.usage.cache_read_input_tokens or 0
    assert (message.usage.input_tokens + cached, message.usage.output_tokens) == tokens
    shown = [
        text.usage.model_extra["cost"],
        response.usage.model_extra["cost"],
        message.usage.model_extra["cost"],
    ]  # type: ignore[union-attr]
    return records, shown


def test_chat_responses_and_messages_cost_and_settle_the_same(api: Any) -> None:
    tenant = f"fronts-{uuid.uuid4().hex[:8]}"
    add_credits(api, tenant, str(CREDIT_USD))  # `llm-router credits add`: the tenant is metered
    spent = 0
    for model in MODELS:
        records, shown = _three_fronts(api, tenant, model)
        assert [r["status"] for r in records] == ["succeeded"] * 3, model
        # the same job underneath: the same messages reached the model, so the same answer came back
        assert len({str(r["request"]["messages"]) for r in records}) == 1, model
        assert len({r["response"]["choices"][0]["message"]["content"] for r in records}) == 1, model
        usage = [
            {k: r["usage"][k] for k in ("prompt_tokens", "completion_tokens", "cost_nanos")} for r in records
        ]
        assert usage[0] == usage[1] == usage[2] and usage[0]["cost_nanos"] > 0, model
        assert shown == [records[0]["usage"]["cost"]] * 3, model
        # settled one after the other: each record saw the credit less everything settled before it
        cost = usage[0]["cost_nanos"]
        expected = [CREDIT_USD - (spent + k * cost) / NANOS_PER_USD for k in (1, 2, 3)]
        assert [r["usage"]["credits_remaining"] for r in records] == pytest.approx(expected, abs=1e-9), model
        spent += 3 * cost
    # settled once each in the ledger, with nothing left reserved
    raw = sync_redis.Redis.from_url(api.redis_url).hgetall(credits_key(tenant))
    assert int(raw[b"spent"]) == spent and int(raw[b"reserved"]) == 0
    assert int(raw[b"balance"]) == CREDIT_USD * NANOS_PER_USD - spent
