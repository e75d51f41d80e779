"""``/openapi.json`` is derived from the job contract, not copied: every field of the contract (and of
its messages, parts and tools) is in the document, and unknown keys are forbidden where the contract
forbids them; every route the server has is described."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llm_router.contract import ChatJob, ImagePart, ImageURL, Message, StreamOptions, TextPart, Tool
from producer.http.app import build_app
from producer.http.openapi import DOCUMENT

SCHEMAS: dict[str, Any] = DOCUMENT["components"]["schemas"]


def test_every_contract_field_is_in_the_document() -> None:
    models: dict[str, type[BaseModel]] = {
        "ChatRequest": ChatJob,
        "Message": Message,
        "TextPart": TextPart,
        "ImagePart": ImagePart,
        "ImageURL": ImageURL,
        "Tool": Tool,
        "StreamOptions": StreamOptions,
    }
    for name, model in models.items():
        schema = SCHEMAS[name]
        assert set(model.model_fields) == set(schema["properties"]), name
        assert schema["additionalProperties"] is False, name  # the contract refuses unknown keys
    # the eight fields the hand-written copy lacked, among others
    for field in ("cache", "cache_ttl_s", "answer_format", "logprobs", "top_logprobs", "logit_bias"):
        assert field in SCHEMAS["ChatRequest"]["properties"]
    assert SCHEMAS["ChatRequest"]["required"] == ["model", "messages"]


def test_the_document_is_openapi_30_throughout() -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            assert "$defs" not in node and "const" not in node, where
            ref = node.get("$ref")
            assert ref is None or ref.removeprefix("#/components/schemas/") in SCHEMAS, (where, ref)
            for key in ("exclusiveMinimum", "exclusiveMaximum"):
                assert not isinstance(node.get(key), int | float) or isinstance(node.get(key), bool), where
            assert {"type": "null"} not in node.get("anyOf", []), where
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    assert DOCUMENT["openapi"].startswith("3.0")
    walk(DOCUMENT, "")


def test_every_route_is_described(sim_catalog: Any) -> None:
    from config.settings import Settings

    app = build_app(Settings(_env_file=None, redis_url="redis://127.0.0.1:9/0"), sim_catalog)
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        # the dashboard is a page for people (HTML, its static files and its own JSON), not the API
        if route.method not in ("HEAD", "*") and not route.resource.canonical.startswith("/dashboard")
    }
    documented = {
        (method, path) for path, ops in DOCUMENT["paths"].items() for method in ops if method != "parameters"
    }
    assert served <= documented, served - documented
    gemini = DOCUMENT["paths"]["/v1beta/models/{model}:generateContent"]["post"]
    assert {"googApiKey": []} in gemini["security"] and {"googQueryKey": []} in gemini["security"]
    assert gemini["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GoogleError"
    }
