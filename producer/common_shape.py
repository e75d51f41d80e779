"""The common shape of a bulk job, recognised without pydantic.

Most bulk lines are a model, plain-text messages and a token limit. ``ChatJob.model_validate`` costs
~5-10 µs for those (a strict model of 50 fields, a Python validator per message and one per job),
half of what a bulk submit spends per job before Redis. ``common_job`` accepts exactly the jobs of
that shape that ``ChatJob`` accepts, checking the same constraints, and answers ``None`` for anything
else, which then goes through ``ChatJob`` as before: whatever is refused is refused by the model, with
its error. ``tests/producer/test_common_shape.py`` holds the two to the same verdicts and values.
"""

from __future__ import annotations

from typing import Any

from llm_router.contract import JOB_ID_RE, ChatJob

# the keys a job of the common shape may have; any other key (even a valid one) takes ChatJob's path
_KEYS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "job_id"}
)
_MESSAGE_KEYS = frozenset({"role", "content"})
# tool and function messages have rules of their own (tool_call_id, text only): ChatJob's path
_ROLES = frozenset({"system", "developer", "user", "assistant"})
_MAX_TOKENS = 10_000_000


class CommonJob:
    """A job of the common shape, read as ``producer.validation`` reads a ``ChatJob``: every field
    ``ChatJob`` has, at its default unless the job gave it; its messages stay dicts of text."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.__dict__.update(obj)

    def ignored_fields(self) -> list[str]:
        return []  # `store`, the one field never sent, is not of this shape

    def image_count(self) -> int:
        return 0

    def first_image_param(self) -> str | None:
        return None


for _name, _field in ChatJob.model_fields.items():  # what a job that does not give a field reads
    setattr(CommonJob, _name, None if _field.is_required() else _field.get_default(call_default_factory=True))


def common_job(obj: dict[str, Any]) -> CommonJob | None:
    """``obj`` as a ``CommonJob`` if it is of the common shape and ``ChatJob`` would accept it, else
    ``None`` (ChatJob decides: it may accept or refuse)."""
    if not obj.keys() <= _KEYS:
        return None
    model = obj.get("model")
    if type(model) is not str or not 1 <= len(model) <= 256:
        return None
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        return None
    for m in messages:
        if (
            type(m) is not dict
            or not m.keys() <= _MESSAGE_KEYS
            or type(m.get("content")) is not str
            or type(m.get("role")) is not str
            or m["role"] not in _ROLES
        ):
            return None
    for key in ("max_tokens", "max_completion_tokens"):
        value = obj.get(key)
        if value is not None and (type(value) is not int or not 1 <= value <= _MAX_TOKENS):
            return None
    temperature = obj.get("temperature")
    # strict floats take ints, never bools; NaN fails the range as it fails ChatJob's
    if temperature is not None and (type(temperature) not in (int, float) or not 0 <= temperature <= 2):
        return None
    top_p = obj.get("top_p")
    if top_p is not None and (type(top_p) not in (int, float) or not 0 <= top_p <= 1):
        return None
    stream = obj.get("stream")
    if stream is not None and type(stream) is not bool:
        return None
    job_id = obj.get("job_id")
    if job_id is not None and (type(job_id) is not str or not JOB_ID_RE.fullmatch(job_id)):
        return None
    return CommonJob(obj)
