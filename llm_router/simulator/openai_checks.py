"""Building blocks of OpenAI request validation: OpenAI's error wording and value checkers.

A checker is ``check(value, param) -> None`` raising ``Rejection(400)`` whose ``param`` is the
JSON path of the offending field (``messages[2].content[0].type``), as OpenAI reports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from llm_router.simulator.wire import Rejection

Checker = Callable[[Any, str], None]

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}

# -- errors ------------------------------------------------------------------------------------


def invalid(param: str | None, message: str, code: str | None = None) -> Rejection:
    return Rejection(400, message, param=param, code=code)


def invalid_type(param: str, value: Any, expected: str) -> Rejection:
    got = _JSON_NAMES.get(type(value), "an object")
    return invalid(
        param, f"Invalid type for '{param}': expected {expected}, but got {got} instead.", "invalid_type"
    )


def missing(param: str) -> Rejection:
    return invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def unrecognized(param: str) -> Rejection:
    return invalid(param, f"Unrecognized request argument supplied: {param}")


def invalid_value(param: str, value: Any, allowed: tuple[str, ...]) -> Rejection:
    supported = ", ".join(f"'{a}'" for a in allowed)
    return invalid(param, f"Invalid value: '{value}'. Supported values are: {supported}.", "invalid_value")


def empty_array(param: str) -> Rejection:
    return invalid(
        param,
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        "empty_array",
    )


def array_too_long(param: str, length: int, limit: int) -> Rejection:
    return invalid(
        param,
        f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
        f"but got an array with length {length} instead.",
        "array_above_max_length",
    )


# -- checkers ----------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(lo: float, hi: float) -> Checker:
    """A JSON number within [lo, hi]."""

    def check(value: Any, param: str) -> None:
        if not is_number(value):
            raise invalid_type(param, value, "a decimal")
        _check_range(param, value, lo, hi, "decimal")

    return check


def integer(lo: int | None = None, hi: int | None = None) -> Checker:
    """A JSON integer within [lo, hi] (None = unbounded); booleans are not integers."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid_type(param, value, "an integer")
        _check_range(param, value, lo, hi, "integer")

    return check


def _check_range(param: str, value: float, lo: float | None, hi: float | None, kind: str) -> None:
    if lo is not None and value < lo:
        raise invalid(
            param,
            f"Invalid '{param}': {kind} below minimum value. "
            f"Expected a value >= {lo}, but got {value} instead.",
            f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise invalid(
            param,
            f"Invalid '{param}': {kind} above maximum value. "
            f"Expected a value <= {hi}, but got {value} instead.",
            f"{kind}_above_max_value",
        )


def typed(kind: type, expected: str) -> Checker:
    """A value of Python type ``kind`` (as decoded from JSON); ``expected`` names it for errors."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise invalid_type(param, value, expected)

    return check


def enum(*allowed: str) -> Checker:
    """One of the ``allowed`` strings."""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, str):
            raise invalid_type(param, value, "a string")
        if value not in allowed:
            raise invalid_value(param, value, allowed)

    return check


string = typed(str, "a string")
boolean = typed(bool, "a boolean")
json_object = typed(dict, "an object")


def string_list(value: Any, param: str) -> None:
    if not isinstance(value, list):
        raise invalid_type(param, value, "an array")
    for i, item in enumerate(value):
        string(item, f"{param}[{i}]")


def non_empty_list(value: Any, param: str, limit: int = 128) -> list[Any]:
    """A list of 1..limit items (returned, for iteration)."""
    if not isinstance(value, list):
        raise invalid_type(param, value, "an array")
    if not value:
        raise empty_array(param)
    if len(value) > limit:
        raise array_too_long(param, len(value), limit)
    return value


def function_name(value: Any, param: str) -> None:
    """A required function/schema name matching OpenAI's ``^[a-zA-Z0-9_-]{1,64}$``."""
    if value is None:
        raise missing(param)
    if not isinstance(value, str):
        raise invalid_type(param, value, "a string")
    if not _NAME_RE.match(value):
        raise invalid(
            param,
            f"Invalid '{param}': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
            "invalid_value",
        )
