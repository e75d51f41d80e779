"""config/cost.py on its own: money exact to the nano-dollar, a call's usage, and the token estimate."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.cost import (
    FREE,
    IMAGE_TOKENS,
    NANOS_PER_USD,
    REASONING_ALLOWANCE,
    call_usage,
    demand_of,
    image_parts,
    nanos_to_usd,
    price_from_rates,
    prompt_tokens,
    text_tokens,
    usd_to_nanos,
)
from llm_router.contract import Usage
from worker.providers.gemini import THINKING_BUDGET as GEMINI_THINKING_BUDGET


def test_money_is_exact_to_the_nano_dollar() -> None:
    price = price_from_rates("0.15", "0.6", source="test")
    assert price.cost_nanos(1, 1) == 750  # $0.15 and $0.60 per 1M tokens: 150 + 600 nano-dollars
    assert price.cost_nanos(1000, 1000, cached_tokens=1000) == 750_000
    tiny = price_from_rates("0.0015", "0.0005", source="test")
    assert tiny.cost_nanos(1, 0) == 2  # 1.5 nano-dollars rounds half up, once per request
    assert tiny.cost_nanos(0, 1) == 1  # 0.5 rounds up too
    assert tiny.cost_nanos(1, 1) == 2  # summed before rounding: 2.0
    assert nanos_to_usd(750) == 7.5e-7
    assert nanos_to_usd(123_456_789_012) == 123.456789012


@pytest.mark.parametrize(
    ("amount", "nanos"),
    [
        ("12.50", 12_500_000_000),
        (0.1, 100_000_000),  # the float's shortest repr, not its binary expansion
        (Decimal("0.000000001"), 1),
        ("-3", -3 * NANOS_PER_USD),
        ("1e-10", 0),  # below a nano-dollar
        (5, 5 * NANOS_PER_USD),
    ],
)
def test_usd_to_nanos(amount: str | float | Decimal, nanos: int) -> None:
    assert usd_to_nanos(amount) == nanos


@pytest.mark.parametrize("amount", ["", "ten", "nan", "inf", "-Infinity", "1,5"])
def test_usd_to_nanos_refuses_what_is_not_an_amount(amount: str) -> None:
    with pytest.raises(ValueError, match="not an amount in USD"):
        usd_to_nanos(amount)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_usd_and_nanos_round_trip_up_to_a_million_dollars(nanos: int) -> None:
    # what records and reports show in USD reads back to the ledger's nano-dollars
    assert usd_to_nanos(nanos_to_usd(nanos)) == nanos


def test_a_calls_usage_is_its_counts_at_its_price() -> None:
    price = price_from_rates("2.5", "10", "1.25", source="test")
    usage = call_usage(price, 1000, 200, cached_tokens=400, reasoning_tokens=50)
    assert usage["cost_nanos"] == price.cost_nanos(1000, 200, 400) == 600 * 2500 + 400 * 1250 + 200 * 10_000
    assert usage["cost"] == nanos_to_usd(usage["cost_nanos"])
    assert (usage["total_tokens"], usage["reasoning_tokens"]) == (1200, 50)
    assert "estimated" not in usage
    # exactly the record's usage fields, so the record parses it as it stands
    assert Usage(**usage).model_dump(exclude={"credits_remaining", "estimated"}) == usage
    written = call_usage(price, 1000, 0, cache_write_tokens=1000)
    assert written["cost_nanos"] == 1000 * 2500  # no cache-write rate: writes pay the input rate


def test_an_estimated_call_is_marked() -> None:
    price = price_from_rates("1", "1", source="test")
    request = orjson.dumps({"messages": [{"role": "user", "content": "hi"}]})
    usage = call_usage(price, prompt_tokens(request), text_tokens("héllo wörld"), estimated=True)
    assert usage["estimated"] is True and Usage(**usage).estimated
    assert usage["completion_tokens"] == 4  # 13 UTF-8 bytes / 4, rounded up
    assert call_usage(FREE, 10, 10)["cost_nanos"] == 0


def test_prompt_tokens_count_images_by_the_image_not_by_its_bytes() -> None:
    data = "data:image/png;base64," + "A" * 40_000

    def request(url: str) -> bytes:
        return orjson.dumps({"messages": [{"content": [{"image_url": {"url": url}, "type": "image_url"}]}]})

    with_image, without = request(data), request("")
    assert image_parts(orjson.loads(with_image)) == (1, len(data))
    assert prompt_tokens(with_image, *image_parts(orjson.loads(with_image))) == (
        prompt_tokens(without) + IMAGE_TOKENS
    )
    assert prompt_tokens(b"x" * 401) == 101
    assert text_tokens("") == 0 and text_tokens("abcd") == 1 and text_tokens("abcde") == 2


def test_only_image_parts_leave_the_prompt_estimate() -> None:
    # a "url" anywhere else (a tool's schema, a response format's) is text the provider bills
    padding = "https://x.example/" + "A" * 40_000
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"url": padding}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"url": padding}}},
    }
    request = orjson.dumps(body)
    images, chars = image_parts(body)
    assert (images, chars) == (1, len("data:image/png;base64,AAAA"))
    assert prompt_tokens(request, images, chars) >= 2 * len(padding) // 4 + IMAGE_TOKENS


def test_every_reasoning_effort_gemini_thinks_on_is_reserved() -> None:
    # Gemini's thinking budget is spent beyond maxOutputTokens: each effort the adapter sends must
    # be in the reservation, at least as large
    for effort, budget in GEMINI_THINKING_BUDGET.items():
        assert REASONING_ALLOWANCE.get(effort, 0) >= budget, effort


def test_a_prediction_is_reserved_as_output_it_may_be_billed() -> None:
    # OpenAI bills the predicted tokens it rejects as output, beyond max_tokens
    request = {"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "edit"}]}
    predicted = {**request, "prediction": {"type": "content", "content": "x" * 40_000}}
    plain, with_prediction = demand_of(request, 100), demand_of(predicted, 100)
    assert with_prediction.extra_output - plain.extra_output >= 10_000
