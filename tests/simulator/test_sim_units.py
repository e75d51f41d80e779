"""Offline units: token counting, deterministic content, schema sampling, config loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from llm_router.simulator import FaultRule, SimConfig, count_prompt_tokens, count_text_tokens
from llm_router.simulator.content import cut_at_stop, request_digest, sample_json, truncate_to_tokens
from llm_router.simulator.faults import FaultBook


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100), ("é", 1), ("ééé", 2), ("日本語", 3)],
)
def test_count_text_tokens(text: str, tokens: int) -> None:
    assert count_text_tokens(text) == tokens


def test_count_prompt_tokens_follows_the_documented_rule() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    tool_calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages: list[Any] = [
        {"role": "system", "content": "abcd"},  # 4 + 1
        {"role": "user", "name": "ann", "content": [{"type": "text", "text": "abcdefgh"}]},  # 4 + 2 + 1
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "low"}}],
        },  # 4 + 85
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},  # 4 + 765
        {"role": "assistant", "content": None, "tool_calls": tool_calls},  # 4 + json
        {"role": "tool", "tool_call_id": "c", "content": ""},  # 4
    ]
    calls_json = '[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]'
    tools_json = '[{"type":"function","function":{"name":"f"}}]'
    expected = 3 + 5 + 7 + 89 + 769 + 4 + count_text_tokens(calls_json) + 4
    assert count_prompt_tokens(messages) == expected
    assert count_prompt_tokens(messages, tools) == expected + count_text_tokens(tools_json)
    assert count_prompt_tokens([]) == 3
    # gpt-4o-mini bills an image as many more tokens than gpt-4o does, as OpenAI's does
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]
    assert count_prompt_tokens(image, model="gpt-4o") == 3 + 4 + 765
    assert count_prompt_tokens(image, model="openai/gpt-4o-mini") == 3 + 4 + 2_833 + 4 * 5_667


def test_truncate_and_stop() -> None:
    assert truncate_to_tokens("abcdefgh", 1) == ("abcd", True)
    assert truncate_to_tokens("abcd", 1) == ("abcd", False)
    assert truncate_to_tokens("ééé", 1) == ("éé", True)  # never splits a UTF-8 character
    assert cut_at_stop("one two three", ["three", "two"]) == "one "
    assert cut_at_stop("one", ["x", ""]) == "one"


def test_digest_is_stable_and_sensitive() -> None:
    assert request_digest("m", [{"role": "user", "content": "a"}]) == request_digest(
        "m", [{"role": "user", "content": "a"}]
    )
    assert request_digest("m", [{"role": "user", "content": "a"}]) != request_digest(
        "m", [{"role": "user", "content": "b"}]
    )


DIGEST = bytes(range(16))
SCHEMAS: list[tuple[str, dict[str, Any], Any]] = [
    ("string", {"type": "string"}, str),
    ("integer bounds", {"type": "integer", "minimum": 10, "maximum": 20}, int),
    ("number exclusive", {"type": "number", "exclusiveMinimum": 5}, float),
    ("boolean", {"type": "boolean"}, bool),
    ("nullable", {"type": ["null", "integer"]}, int),
    ("enum", {"enum": ["a", "b", "c"]}, str),
    ("const", {"const": 7}, int),
    ("array", {"type": "array", "items": {"type": "integer"}, "minItems": 3}, list),
    ("object", {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, dict),
    ("date", {"type": "string", "format": "date"}, str),
    ("anyOf", {"anyOf": [{"type": "null"}, {"type": "boolean"}]}, bool),
    (
        "ref",
        {
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/P"}},
            "required": ["p"],
            "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        },
        dict,
    ),
]


@pytest.mark.parametrize(("schema", "kind"), [s[1:] for s in SCHEMAS], ids=[s[0] for s in SCHEMAS])
def test_sample_json_types(schema: dict[str, Any], kind: type) -> None:
    value = sample_json(schema, DIGEST)
    assert type(value) is kind or (kind is float and isinstance(value, int | float))
    assert sample_json(schema, DIGEST) == value


def test_sample_json_constraints() -> None:
    assert 10 <= sample_json({"type": "integer", "minimum": 10, "maximum": 20}, DIGEST) <= 20
    assert sample_json({"type": "number", "exclusiveMinimum": 5}, DIGEST) > 5
    assert sample_json({"enum": ["a", "b", "c"]}, DIGEST) in ("a", "b", "c")
    assert len(sample_json({"type": "array", "items": {}, "minItems": 3}, DIGEST)) == 3
    assert len(sample_json({"type": "string", "minLength": 40}, DIGEST)) == 40
    assert len(sample_json({"type": "string", "maxLength": 2}, DIGEST)) == 2
    assert sample_json(
        {"type": "object", "properties": {"a": {}, "b": {}}, "required": ["b"]}, DIGEST
    ).keys() == {"b"}
    assert sample_json({"type": "object", "properties": {"a": {}, "b": {}}}, DIGEST).keys() == {"a", "b"}
    ref = SCHEMAS[-1][1]
    assert isinstance(sample_json(ref, DIGEST)["p"]["x"], int)
    recursive = {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]}
    assert isinstance(sample_json(recursive, DIGEST), dict)  # bounded depth, no recursion error


def test_from_yaml(tmp_path: Path) -> None:
    profile = tmp_path / "flaky.yaml"
    profile.write_text(
        "latency_ms: 25\n"
        "models: [gpt-4o-mini, gpt-4o]\n"
        "seed: 7\n"
        "rules:\n"
        "  - {credential: sk-flaky, kind: status, status: 429, retry_after: 1, probability: 0.3}\n"
        "  - {model: gpt-4o, kind: latency, latency_ms: 100, after_s: 5, for_s: 10}\n"
    )
    config = SimConfig.from_yaml(profile)
    assert config.latency_ms == (25, 25)
    assert config.models == ["gpt-4o-mini", "gpt-4o"]
    assert config.seed == 7
    assert config.rules[0] == FaultRule(
        credential="sk-flaky", kind="status", status=429, retry_after=1, probability=0.3
    )
    assert config.rules[1].for_s == 10
    (tmp_path / "empty.yaml").write_text("")
    assert SimConfig.from_yaml(tmp_path / "empty.yaml") == SimConfig()
    (tmp_path / "range.yaml").write_text("latency_ms: [10, 50]\n")
    assert SimConfig.from_yaml(tmp_path / "range.yaml").latency_ms == (10, 50)


@pytest.mark.parametrize(
    "data",
    [{"latency_ms": [50, 10]}, {"latency_ms": [-1, 10]}, {"colour": "red"}, {"rules": [{"kind": "nope"}]}],
)
def test_bad_configs_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SimConfig.model_validate(data)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fault_book_window_and_count_with_a_fake_clock() -> None:
    clock = Clock()
    book = FaultBook([FaultRule(kind="reset", after_s=1, for_s=2, count=2)], clock=clock)
    assert book.decide("k", "m") is None
    clock.now += 1.5
    first = book.decide("k", "m")
    assert first is not None and first.rule is not None and first.rule.kind == "reset"
    assert book.decide("k", "m") is not None
    assert book.decide("k", "m") is None  # count used up
    book.add([FaultRule(kind="malformed", for_s=1)])
    clock.now += 1
    assert book.decide("k", "m") is None  # window over
    assert [r["fired"] for r in book.describe()] == [2, 0]
