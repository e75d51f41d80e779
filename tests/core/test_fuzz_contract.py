"""Property-based fuzzing (bounded): no input crashes the producer or a translator.

Every job is either accepted, and then every wire format can build its upstream request, or refused
with a stable code from the error table (``invalid_request`` naming a field where one is to blame).
Malformed JSON, Gemini-native bodies and upstream byte streams get the same treatment.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.catalog import Catalog
from config.settings import Settings
from llm_router.errors import ERROR_TABLE, RouterError
from producer.gemini_native import gemini_to_chat
from producer.validation import Validator
from worker.providers import ADAPTERS
from worker.providers.sse import SSEDecoder

# `make test` replays the same examples every run (a CI run must not fail by chance); `make chaos`
# sets LLM_ROUTER_FUZZ_EXAMPLES and draws new ones each time
EXAMPLES = int(os.environ.get("LLM_ROUTER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MODELS = [
    "gpt-4o",
    "claude-sonnet-4-5",
    "gemini-2.5-flash",
    "mixtral-8x7b",
    "gpt-3.5-turbo",
    "o1",
    "nope",
    "",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# what can come over the wire from a provider: JSON, so integers within 64 bits
wire_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=20)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), scalars)}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.one_of(
                st.fixed_dictionaries(
                    {
                        "url": st.sampled_from(
                            ["https://example.com/a.png", "http://x", "data:image/png;base64,iVBO", ""]
                        )
                    }
                ),
                json_values,
            ),
        }
    ),
    json_values,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "robot", ""]),
                "content": st.one_of(st.text(max_size=40), st.lists(parts, max_size=3), scalars),
            },
            optional={
                "tool_call_id": st.text(max_size=8),
                "name": st.text(max_size=8),
                "tool_calls": json_values,
            },
        ),
        json_values,
    ),
    max_size=4,
)
PARAMS = [
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "n",
    "seed",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "stream",
    "fallbacks",
    "deadline_s",
    "metadata",
    "job_id",
    "bogus",
]
jobs = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), scalars), "messages": st.one_of(messages, scalars)},
    optional={name: json_values for name in PARAMS},
)


def _refused_well(exc: RouterError) -> None:
    assert exc.code in ERROR_TABLE, exc
    body = exc.to_dict()
    assert body["message"] and body["status"] == ERROR_TABLE[exc.code].status
    if exc.code == "invalid_request" and exc.param is not None:
        assert isinstance(exc.param, str) and exc.param


@FUZZ
@given(job=jobs)
def test_any_job_is_accepted_and_translatable_or_refused_with_a_code(
    sim_catalog: Catalog, job: dict[str, Any]
) -> None:
    validator = Validator(sim_catalog, Settings(_env_file=None))
    try:
        prepared = validator.prepare(job, now=1.0)
    except RouterError as exc:
        _refused_well(exc)
        return
    request = orjson.loads(prepared.request)
    for model in prepared.route:
        for dep in sim_catalog.deployments(model):
            wire = ADAPTERS[dep.format]
            try:
                call = wire.build_request(request, dep)
            except RouterError as exc:  # a provider that cannot take this shape says which field
                _refused_well(exc)
                continue
            assert call.url.startswith("http") and isinstance(call.body, bytes)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_malformed_bytes_are_refused_never_crash(sim_catalog: Catalog, raw: bytes) -> None:
    try:
        Validator(sim_catalog, Settings(_env_file=None)).prepare(raw, now=1.0)
    except RouterError as exc:
        _refused_well(exc)


@FUZZ
@given(
    body=st.fixed_dictionaries(
        {"model": st.sampled_from(MODELS), "contents": json_values},
        optional={"generationConfig": json_values, "systemInstruction": json_values, "tools": json_values},
    )
)
def test_gemini_native_bodies_convert_or_are_refused(sim_catalog: Catalog, body: dict[str, Any]) -> None:
    try:
        chat = gemini_to_chat(body)
    except RouterError as exc:
        _refused_well(exc)
        return
    try:
        Validator(sim_catalog, Settings(_env_file=None)).prepare(chat, now=1.0)
    except RouterError as exc:
        _refused_well(exc)


# events shaped like each vendor's, with random insides: the parsers' own branches get exercised
openai_events = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries({"index": wire_values, "delta": wire_values, "finish_reason": wire_values}),
            max_size=2,
        )
    },
    optional={"usage": wire_values, "id": wire_values, "error": wire_values},
).map(lambda v: b"data: " + orjson.dumps(v) + b"\n\n")
anthropic_events = st.tuples(
    st.sampled_from(
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
        ]
    ),
    st.dictionaries(
        st.sampled_from(["type", "index", "delta", "content_block", "message", "usage", "error"]),
        wire_values,
        max_size=4,
    ),
).map(lambda ev: b"event: " + ev[0].encode() + b"\ndata: " + orjson.dumps({**ev[1], "type": ev[0]}) + b"\n\n")
gemini_events = st.fixed_dictionaries(
    {
        "candidates": st.lists(
            st.fixed_dictionaries(
                {"content": wire_values},
                optional={
                    "finishReason": st.one_of(st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY"]), wire_values),
                    "index": wire_values,
                },
            ),
            max_size=2,
        )
    },
    optional={"usageMetadata": wire_values},
).map(lambda v: b"data: " + orjson.dumps(v) + b"\n\n")


@FUZZ
@given(
    fmt=st.sampled_from(["openai", "anthropic", "gemini"]),
    shaped=st.data(),
)
def test_vendor_shaped_streams_never_crash_a_parser(sim_catalog: Catalog, fmt: str, shaped: Any) -> None:
    events = {"openai": openai_events, "anthropic": anthropic_events, "gemini": gemini_events}[fmt]
    stream = shaped.draw(st.lists(events, max_size=8))
    _feed_stream(sim_catalog, fmt, stream)


@FUZZ
@given(
    fmt=st.sampled_from(["openai", "anthropic", "gemini"]),
    stream=st.lists(
        st.one_of(
            st.binary(max_size=60),
            wire_values.map(lambda v: b"data: " + orjson.dumps(v) + b"\n\n"),
            st.sampled_from([b"data: [DONE]\n\n", b"event: message_stop\ndata: {}\n\n", b": ping\n\n"]),
        ),
        max_size=8,
    ),
)
def test_upstream_streams_never_crash_a_parser(sim_catalog: Catalog, fmt: str, stream: list[bytes]) -> None:
    _feed_stream(sim_catalog, fmt, stream)


def _feed_stream(sim_catalog: Catalog, fmt: str, stream: list[bytes]) -> None:
    model = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}[fmt]
    dep = next(d for d in sim_catalog.deployments(model) if d.format == fmt)
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    parser = ADAPTERS[fmt].stream_parser(request, dep)
    decoder = SSEDecoder()
    try:
        for piece in stream:
            for event in decoder.feed(piece):
                parser.feed(event)
        if parser.done:
            parser.completion()
    except RouterError as exc:
        _refused_well(exc)
