"""Lanes on the OpenAI-compatible front, through the official SDK: `service_tier: "flex"` is the flex
lane (priced at the flex discount), and a request naming another lane beside it is a 400."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]


async def test_service_tier_flex_runs_the_flex_lane(api: Any) -> None:
    client = api.async_openai("acme")
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=16, service_tier="flex"
    )
    completion = raw.parse()
    assert completion.service_tier == "flex"
    async with aiohttp.ClientSession() as s:
        r = await s.get(
            f"{api.url}/v1/jobs/{raw.headers['x-llm-router-job-id']}", headers=api.headers("acme")
        )
        record = await r.json()
    assert record["lane"] == "flex"


async def test_service_tier_flex_with_another_lane_is_a_400_naming_lane(api: Any) -> None:
    client = api.async_openai("acme")
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, service_tier="flex", extra_body={"lane": "now"}
        )
    assert err.value.body["param"] == "lane"
    with pytest.raises(openai.BadRequestError) as err:  # the chat endpoints never wait for a batch
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_body={"lane": "batch"}
        )
    assert err.value.body["param"] == "lane"
