"""Deterministic content: reply text and JSON values that satisfy a JSON schema.

Everything derives from a digest of the request, so the same request always gets the same
answer and a different prompt gets a different one - tests can assert on exact bytes without
the simulator keeping any state.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import orjson

_WORDS = (
    "amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor",
    "indigo", "juniper", "kelp", "lantern", "meadow", "nectar", "orchid", "pebble",
    "quartz", "raven", "saffron", "tundra", "umber", "violet", "willow", "xenon",
    "yarrow", "zephyr", "anchor", "bramble", "cobalt", "dune", "echo", "falcon",
    "glacier", "hazel", "iris", "jasper", "kestrel", "lichen", "marble", "nimbus",
    "onyx", "prairie", "quill", "ripple", "sierra", "thistle", "upland", "vale",
    "wren", "yonder", "zinc", "aspen", "birch", "canyon", "drift", "estuary",
    "fern", "grove", "heron", "inlet", "jade", "knoll", "lagoon", "mesa",
)  # fmt: skip
_MAX_DEPTH = 8


def request_digest(*parts: Any) -> bytes:
    """A 16-byte digest of the JSON-serialisable ``parts`` (e.g. model, messages, seed)."""
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).digest()


def choice_digest(digest: bytes, index: int) -> bytes:
    """The digest for choice ``index``: choice 0 reuses the request digest, others derive one."""
    if index == 0:
        return digest
    return hashlib.blake2b(digest + index.to_bytes(4, "big"), digest_size=16).digest()


def reply_text(model: str, prompt_digest: bytes, digest: bytes) -> str:
    """A sentence of a few dozen tokens naming the model and the prompt's digest."""
    words = " ".join(_WORDS[b & 63] for b in digest[:12])
    return f"Simulated reply from {model} to prompt {prompt_digest[:4].hex()}: {words}."


def continue_from(text: str, prefill: str) -> str:
    """What a model says after an assistant ``prefill``: the rest of ``text`` (the answer it would
    have given without one) when that answer starts with the prefill, else the whole answer. So a
    deployment continuing another's cut answer of the same request completes it exactly."""
    return text[len(prefill) :] if text.startswith(prefill) else text


def truncate_to_tokens(text: str, max_tokens: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_tokens`` tokens (4 UTF-8 bytes each); report if it was cut."""
    data = text.encode("utf-8")
    limit = max_tokens * 4
    if len(data) <= limit:
        return text, False
    return data[:limit].decode("utf-8", errors="ignore"), True


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Cut ``text`` before the earliest stop sequence, as providers do (finish_reason stays "stop")."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return text[:cut] if cut >= 0 else text


def sample_json(schema: Any, digest: bytes, name: str = "value") -> Any:
    """A deterministic value valid for ``schema`` (a practical JSON-schema subset).

    Covers type (incl. lists and null), enum, const, object properties/required, arrays with
    items/minItems/maxItems, numeric bounds, string length and common formats, anyOf/oneOf/allOf
    and local ``$ref``. Objects carry their required properties, or all properties when the
    schema lists none as required.
    """
    return _Sampler(schema if isinstance(schema, dict) else {}, digest).value(schema, name, 0)


class _Sampler:
    def __init__(self, root: dict[str, Any], digest: bytes) -> None:
        self._root = root
        self._digest = digest

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if not isinstance(schema, dict):
            return self._string({}, name)
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self._digest[len(name) % 16] % len(enum)]
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
                return self.value((non_null or options)[0], name, depth + 1)
        kind = _schema_type(schema)
        if depth >= _MAX_DEPTH:
            return {"object": {}, "array": []}.get(kind)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self._string(schema, name)

    def _resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and depth < _MAX_DEPTH:
            target: Any = self._root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            if isinstance(target, dict):
                return self._resolve(target, depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    part = self._resolve(part, depth + 1)
                    merged.setdefault("properties", {}).update(part.get("properties", {}))
                    merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                    merged.setdefault("type", part.get("type"))
            return merged
        return schema

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(properties)
        return {str(n): self.value(properties.get(n, {}), str(n), depth + 1) for n in names}

    def _array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            return [self.value(item, name, depth + 1) for item in prefix]
        size = max(1, _int_or(schema.get("minItems"), 1))
        maximum = schema.get("maxItems")
        if isinstance(maximum, int):
            size = min(size, maximum)
        item = self.value(schema.get("items", {}), name, depth + 1)
        return [item] * size

    def _string(self, schema: dict[str, Any], name: str) -> str:
        fmt = schema.get("format")
        text = _FORMATS.get(fmt) if isinstance(fmt, str) else None
        if text is None:
            text = f"{name}-{self._digest[:3].hex()}"
        minimum = _int_or(schema.get("minLength"), 0)
        if len(text) < minimum:
            text = text + "x" * (minimum - len(text))
        maximum = schema.get("maxLength")
        if isinstance(maximum, int):
            text = text[:maximum]
        return text


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "sim@example.com",
    "uri": "https://example.com/sim",
    "url": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    step = 1 if integer else 0.5
    value: float = 1
    lo, hi = schema.get("minimum"), schema.get("maximum")
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is_number(lo):
        value = max(value, lo)
    if _is_number(ex_lo):
        value = max(value, ex_lo + step)
    if _is_number(hi):
        value = min(value, hi)
    if _is_number(ex_hi):
        value = min(value, ex_hi - step)
    return math.ceil(value) if integer else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_or(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
