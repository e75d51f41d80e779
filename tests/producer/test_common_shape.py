"""The common shape's fast path (``producer.common_shape``) against ``ChatJob``: it accepts only what
the model accepts, reads the same values, and a job prepared either way becomes the same record."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from config.catalog import Catalog
from config.settings import Settings
from llm_router.contract import ChatJob
from llm_router.errors import RouterError
from producer import validation
from producer.common_shape import common_job
from producer.validation import Validator

EXAMPLES = int(os.environ.get("LLM_ROUTER_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 1000,
    derandomize=not EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# values near every edge of the common shape's constraints, of the right type and of wrong ones
ANY = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        2,
        3,
        10_000_000,
        10_000_001,
        0.0,
        0.5,
        1.0,
        2.0,
        2.5,
        -0.1,
        math.nan,
        math.inf,
        "",
        "x",
        "gpt-4o-mini",
        "a" * 256,
        "a" * 257,
        "ok-id",
        "-bad",
        "a" * 129,
        [],
        {},
        [1],
        {"a": 1},
    ]
)
ROLES = st.sampled_from(
    ["system", "developer", "user", "assistant", "tool", "function", "robot", "", None, 1]
)
KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stream",
        "job_id",
        "n",
        "store",
        "tools",
    ]
)
MESSAGE_KEYS = st.sampled_from(["role", "content", "name", "tool_call_id", "refusal", "extra"])


@st.composite
def near_common(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job of the common shape with a few of its values (or its messages' values) changed to
    ones near an edge: most draws sit on one side or the other of one constraint."""
    obj: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for key in draw(st.lists(KEYS, max_size=2)):
        if draw(st.booleans()):
            obj.pop(key, None)
        else:
            obj[key] = draw(ANY)
    if isinstance(obj.get("messages"), list) and draw(st.booleans()):
        messages = [{"role": draw(ROLES), "content": draw(st.one_of(st.text(max_size=3), ANY))}]
        for key in draw(st.lists(MESSAGE_KEYS, min_size=1, max_size=2)):
            messages[0][key] = draw(st.one_of(ROLES, ANY))
        obj["messages"] = draw(
            st.sampled_from([messages, messages + obj["messages"], obj["messages"] + messages])
        )
    return obj


def _model_verdict(obj: dict[str, Any]) -> ChatJob | None:
    try:
        return ChatJob.model_validate(obj)
    except ValidationError:
        return None


@FUZZ
@given(near_common())
def test_the_fast_path_accepts_only_what_chatjob_accepts_with_the_same_values(obj: dict[str, Any]) -> None:
    fast = common_job(obj)
    if fast is None:
        return  # ChatJob decides, as for every job before the fast path
    job = _model_verdict(obj)
    assert job is not None, f"the fast path accepted a job ChatJob refuses: {obj!r}"
    for name in ChatJob.model_fields:
        if name == "messages":
            assert [m.model_dump(exclude_unset=True) for m in job.messages] == fast.messages
        else:
            assert getattr(fast, name) == getattr(job, name), name
    assert fast.ignored_fields() == job.ignored_fields()
    assert (fast.first_image_param(), fast.image_count()) == (job.first_image_param(), job.image_count())


@pytest.mark.parametrize(
    "obj",
    [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 32,
            "temperature": 0,
            "top_p": 1,
            "stream": False,
            "job_id": "line-1",
        },
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7},
    ],
)
def test_common_jobs_take_the_fast_path(obj: dict[str, Any]) -> None:
    assert common_job(obj) is not None and _model_verdict(obj) is not None


def _prepared(validator: Validator, obj: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return asdict(validator.prepare(obj, now=1_000.0, new_id="f" * 32))
    except RouterError as exc:
        return f"{exc.code} {exc.param} {exc}"


@pytest.mark.parametrize(
    "obj",
    [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32},
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]},  # a route chooses the model
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "job_id": "j"},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9_000_000},
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ],
)
def test_a_job_prepared_either_way_is_the_same(
    sim_catalog: Catalog, obj: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record (or the refusal) of a common job does not depend on which path validated it."""
    assert common_job(obj) is not None
    settings_ = Settings(_env_file=None)
    fast = _prepared(Validator(sim_catalog, settings_), obj)
    monkeypatch.setattr(validation, "common_job", lambda _obj: None)
    assert _prepared(Validator(sim_catalog, settings_), obj) == fast
