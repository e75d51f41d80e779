"""The official ``google-genai`` SDK, used as Google's docs show, on our Gemini front at its default
path (``/v1beta``): any catalog model answers, Gemini-backed or not."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from google import genai
from google.genai import errors
from google.genai import types as gtypes
from pydantic import BaseModel, TypeAdapter

compat = pytest.mark.compat
MODELS = ["gemini-2.5-flash", "gpt-4o-mini", "claude-haiku-4-5"]
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def client(front: Any, tenant: str = "compat", **http: Any) -> genai.Client:
    # the SDK's own default path; only the host is ours. No retries: a test sees every answer
    options = gtypes.HttpOptions(
        base_url=front.url, retry_options=gtypes.HttpRetryOptions(attempts=1), **http
    )
    return genai.Client(api_key=front.key(tenant), http_options=options)


@pytest.mark.parametrize("model", MODELS)
@compat("google-genai", "chat", "`client.models.generate_content(model=..., contents=...)`, `usage_metadata`")
def test_generate_content(front: Any, model: str) -> None:
    sdk = client(front)
    answer = sdk.models.generate_content(model=model, contents="Say hello.")
    assert answer.text and answer.usage_metadata.total_token_count > 0


@pytest.mark.parametrize("model", MODELS)
@compat("google-genai", "streaming", "`client.models.generate_content_stream(...)`")
def test_generate_content_stream(front: Any, model: str) -> None:
    sdk = client(front)
    text = "".join(
        chunk.text or "" for chunk in sdk.models.generate_content_stream(model=model, contents="Hi")
    )
    assert text


class Recipe(BaseModel):
    recipe_name: str
    ingredients: list[str]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@compat(
    "google-genai",
    "structured output",
    "`response_mime_type='application/json'`, `response_schema=list[Recipe]`: `.parsed`, plain and streamed",
)
def test_structured_output_as_googles_docs_ask_for_it(front: Any, model: str, stream: bool) -> None:
    # Google's structured-output guide asks for a list of a Pydantic model: a schema whose root is
    # an array, which a Claude model's forced answer tool cannot take as it is (its input is an object)
    config = gtypes.GenerateContentConfig(response_mime_type="application/json", response_schema=list[Recipe])
    sdk = client(front)
    contents = "List a few popular cookie recipes, and include the amounts of ingredients."
    if stream:
        text = "".join(
            c.text or ""
            for c in sdk.models.generate_content_stream(model=model, contents=contents, config=config)
        )
        recipes = TypeAdapter(list[Recipe]).validate_json(text)
    else:
        answer = sdk.models.generate_content(model=model, contents=contents, config=config)
        recipes = answer.parsed
    assert isinstance(recipes, list) and all(isinstance(r, Recipe) for r in recipes)


@compat("google-genai", "multi-turn chat", "`client.chats.create(...)`, `chat.send_message(...)` twice")
def test_chats(front: Any) -> None:
    sdk = client(front)
    chat = sdk.chats.create(model="gemini-2.5-flash")
    assert chat.send_message("My name is Ada.").text
    assert chat.send_message("What is my name?").text
    assert len(chat.get_history()) == 4


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "gpt-4o-mini"])
@compat(
    "google-genai", "vision", "`types.Part.from_bytes(data=..., mime_type='image/png')` (URL-safe base64)"
)
def test_part_from_bytes(front: Any, model: str) -> None:
    # bytes whose base64 needs the URL-safe alphabet's "-" and "_"
    data = PNG + bytes([0xFB, 0xFF, 0xBF]) * 4
    assert "-" in base64.urlsafe_b64encode(data).decode() or "_" in base64.urlsafe_b64encode(data).decode()
    part = gtypes.Part.from_bytes(data=data, mime_type="image/png")
    sdk = client(front)
    answer = sdk.models.generate_content(model=model, contents=[part, "What is this?"])
    assert answer.text


@compat("google-genai", "tool calling", "`tools=[python_function]` (automatic function calling)")
def test_automatic_function_calling(front: Any) -> None:
    seen: list[str] = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return "sunny"

    config = gtypes.GenerateContentConfig(tools=[get_weather])
    sdk = client(front)
    answer = sdk.models.generate_content(
        model="gemini-2.5-flash", contents="Weather in Paris?", config=config
    )
    assert seen and answer.text


@compat("google-genai", "models", "`client.models.list()`, `client.models.get(model=...)`")
def test_models_list_and_get(front: Any) -> None:
    sdk = client(front)
    names = {m.name for m in sdk.models.list(config={"page_size": 10})}
    assert "models/gemini-2.5-flash" in names and "models/gpt-4o-mini" in names  # paged, all read
    model = sdk.models.get(model="gemini-2.5-flash")
    assert model.name == "models/gemini-2.5-flash" and model.input_token_limit


@compat("google-genai", "async", "`client.aio.models.generate_content(...)` and `..._stream(...)`")
async def test_async(front: Any) -> None:
    sdk = client(front)
    assert (await sdk.aio.models.generate_content(model="gemini-2.5-flash", contents="Hi")).text
    text = ""
    async for chunk in await sdk.aio.models.generate_content_stream(model="gpt-4o-mini", contents="Hi"):
        text += chunk.text or ""
    assert text


@compat(
    "google-genai", "errors", "`errors.ClientError` with Google's `code` and `status` for 401, 402, 404, 429"
)
def test_errors_are_the_sdks_typed_exceptions(front: Any) -> None:
    bad = genai.Client(
        api_key="lr-not-a-key",
        http_options=gtypes.HttpOptions(
            base_url=front.url, retry_options=gtypes.HttpRetryOptions(attempts=1)
        ),
    )
    cases = [
        (bad, "gemini-2.5-flash", 401, "UNAUTHENTICATED"),
        (client(front, "compat-broke"), "gemini-2.5-flash", 402, "FAILED_PRECONDITION"),
        (client(front), "no-such-model", 404, "NOT_FOUND"),
        (client(front, "compat-busy"), "gemini-2.5-flash", 429, "RESOURCE_EXHAUSTED"),
    ]
    for sdk, model, code, status in cases:
        with pytest.raises(errors.ClientError) as info:
            sdk.models.generate_content(model=model, contents="Hi")
        assert (info.value.code, info.value.status) == (code, status)
