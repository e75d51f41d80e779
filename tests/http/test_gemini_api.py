"""The Gemini-native endpoint through Google's own SDK (``google-genai``), on models of any vendor."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from google import genai
from google.genai import errors, types

# google-genai subclasses aiohttp.ClientSession, which aiohttp warns about; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


def client(api: Any, tenant: str = "acme") -> genai.Client:
    return genai.Client(
        api_key=api.key_for(tenant),
        http_options=types.HttpOptions(base_url=api.url, api_version="v1", timeout=30_000),
    )


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "claude-sonnet-4-5"])
async def test_generate_content(api: Any, model: str) -> None:
    response = await client(api).aio.models.generate_content(
        model=model,
        contents="Say hello.",
        config=types.GenerateContentConfig(
            system_instruction="Be brief.", temperature=0.2, max_output_tokens=32
        ),
    )
    assert isinstance(response, types.GenerateContentResponse)
    assert response.text and response.text.strip()
    usage = response.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.total_token_count
    full = usage.candidates_token_count == 32  # the answer ran into max_output_tokens
    finish = types.FinishReason.MAX_TOKENS if full else types.FinishReason.STOP
    assert response.candidates and response.candidates[0].finish_reason == finish


async def test_stream_generate_content_sse(api: Any) -> None:
    pieces = [
        p
        async for p in await client(api).aio.models.generate_content_stream(
            model="gpt-4o-mini",
            contents="Say hello.",
            config=types.GenerateContentConfig(max_output_tokens=32),
        )
    ]
    assert len(pieces) >= 2
    text = "".join(p.text or "" for p in pieces)
    assert text.strip()
    last = pieces[-1]
    assert last.usage_metadata is not None and last.usage_metadata.total_token_count
    assert last.candidates and last.candidates[0].finish_reason in (
        types.FinishReason.STOP,
        types.FinishReason.MAX_TOKENS,
    )
    assert all(p.candidates and p.candidates[0].finish_reason is None for p in pieces[:-1])


async def test_stream_without_alt_sse_is_one_json_array(api: Any) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            f"{api.url}/v1/models/gpt-4o-mini:streamGenerateContent",
            json=body,
            headers={"x-goog-api-key": api.key_for("acme")},
        )
        assert r.status == 200
        pieces = orjson.loads(await r.read())
    assert isinstance(pieces, list) and len(pieces) >= 2
    assert "".join(p["candidates"][0]["content"]["parts"][0].get("text", "") for p in pieces).strip()


async def test_gemini_errors(api: Any) -> None:
    with pytest.raises(errors.ClientError) as missing:
        await client(api).aio.models.generate_content(model="no-such-model", contents="hi")
    assert missing.value.code == 404
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "cachedContent": "caches/x"}
    async with aiohttp.ClientSession() as s:
        r = await s.post(
            f"{api.url}/v1/models/gpt-4o-mini:generateContent",
            json=body,
            headers={"x-goog-api-key": api.key_for("acme")},
        )
        error = (await r.json())["error"]
        assert r.status == 400 and error["status"] == "INVALID_ARGUMENT"
        assert error["details"][0]["metadata"]["param"] == "cachedContent"


async def test_the_methods_the_front_has_not_are_refused_in_googles_shape(api: Any) -> None:
    # google-genai calls /v1/... with its key in x-goog-api-key: a method the front has not is a 404
    # Google's client reads (not an OpenAI-shaped 401 "missing API key", nor an OpenAI route's answer)
    genai_client = client(api)
    with pytest.raises(errors.ClientError) as tokens:
        await genai_client.aio.models.count_tokens(model="gemini-2.5-flash", contents="hi")
    assert (tokens.value.code, tokens.value.status) == (404, "NOT_FOUND")
    assert "countTokens" in tokens.value.message
    with pytest.raises(errors.ClientError) as batches:
        await genai_client.aio.batches.list()
    assert (batches.value.code, batches.value.status) == (404, "NOT_FOUND")
    # the model list, which the front answers there, still works
    assert [m async for m in await genai_client.aio.models.list()]
