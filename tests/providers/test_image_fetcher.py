"""The SSRF-guarded image fetcher, against a local aiohttp server (loopback: refused by default)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from config.settings import Settings
from llm_router.errors import InvalidRequest
from worker.images import ImageFetcher

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _app() -> web.Application:
    async def cat(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def big(request: web.Request) -> web.StreamResponse:
        # no Content-Length: the limit must hold while streaming
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(40):
            await resp.write(b"\0" * 1024)
        await resp.write_eof()
        return resp

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/page", html)
    app.router.add_get("/big.png", big)
    app.router.add_get("/go", redirect)
    app.router.add_get("/missing.png", missing)
    return app


@pytest.fixture
async def server() -> AsyncIterator[str]:
    runner = web.AppRunner(_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def _settings(**kw) -> Settings:
    return Settings(_env_file=None, image_fetch_timeout_s=5, **kw)


def _request(url: str) -> dict:
    return {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            },
        ],
    }


async def _refused(fetcher: ImageFetcher, url: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        await fetcher.inline(_request(url))
    await fetcher.close()
    assert info.value.param == "messages[1].content[1].image_url.url"
    return info.value


async def test_loopback_is_refused_by_default(server: str) -> None:
    error = await _refused(ImageFetcher(_settings()), f"{server}/cat.png")
    assert "not allowed" in error.message


async def test_a_host_name_resolving_to_loopback_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    error = await _refused(ImageFetcher(_settings()), f"http://localhost:{port}/cat.png")
    assert "resolves to a private or internal address" in error.message


async def test_allowed_by_the_setting_the_image_is_inlined_as_a_data_uri(server: str) -> None:
    fetcher = ImageFetcher(_settings(image_fetch_allow_private=True))
    request = _request(f"{server}/cat.png")
    out = await fetcher.inline(request)
    await fetcher.close()
    part = out["messages"][1]["content"][1]
    assert part == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode(), "detail": "low"},
    }
    assert request["messages"][1]["content"][1]["image_url"]["url"] == f"{server}/cat.png"  # not mutated
    assert out["messages"][0] is request["messages"][0]


async def test_data_uris_pass_through_without_a_fetch() -> None:
    request = _request("data:image/png;base64," + base64.b64encode(PNG).decode())
    fetcher = ImageFetcher(_settings())
    assert await fetcher.inline(request) is request
    await fetcher.close()


async def test_a_redirect_to_a_private_address_is_refused(server: str) -> None:
    # the server itself is exempt; the redirect target (another loopback address) is not
    fetcher = ImageFetcher(_settings(), exempt=["127.0.0.1/32"])
    port = server.rsplit(":", 1)[1]
    error = await _refused(fetcher, f"{server}/go?to=http://127.0.0.2:{port}/cat.png")
    assert "127.0.0.2" in error.message


async def test_a_redirect_to_another_scheme_is_refused(server: str) -> None:
    fetcher = ImageFetcher(_settings(), exempt=["127.0.0.1/32"])
    error = await _refused(fetcher, f"{server}/go?to=file:///etc/passwd")
    assert "http(s)" in error.message


async def test_a_checked_redirect_is_followed(server: str) -> None:
    fetcher = ImageFetcher(_settings(), exempt=["127.0.0.1/32"])
    mime, data = await fetcher.fetch(f"{server}/go?to=/cat.png")
    await fetcher.close()
    assert (mime, data) == ("image/png", PNG)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/big.png", "over the limit"),
        ("/page", "text/html, not an image"),
        ("/missing.png", "HTTP 404"),
    ],
)
async def test_too_large_wrong_type_and_errors_are_refused(server: str, path: str, words: str) -> None:
    fetcher = ImageFetcher(_settings(image_fetch_allow_private=True, image_fetch_max_bytes=10_000))
    error = await _refused(fetcher, f"{server}{path}")
    assert words in error.message


async def test_the_fetcher_refuses_what_the_cores_parser_refuses(server: str) -> None:
    fetcher = ImageFetcher(_settings(image_fetch_allow_private=True))
    port = server.rsplit(":", 1)[1]
    error = await _refused(fetcher, f"http://127.0.0.1:{port}\\@example.com/cat.png")
    assert "backslash" in error.message


async def test_the_allowlist_setting_lets_a_private_network_through(server: str) -> None:
    fetcher = ImageFetcher(_settings(image_fetch_allowlist="127.0.0.0/8"))
    out = await fetcher.inline(_request(f"{server}/cat.png"))
    await fetcher.close()
    assert out["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


async def test_a_jobs_image_memory_slot_is_held_for_its_run_and_given_back_when_it_ends(server: str) -> None:
    """``image_inline_jobs`` 1: the job fetching holds the one slot until its scope ends; the next
    job's fetch waits for it, then takes it; a job without images never waits."""
    fetcher = ImageFetcher(_settings(image_fetch_allow_private=True, image_inline_jobs=1))
    request = _request(f"{server}/cat.png")
    first = fetcher.scope()
    with first:
        await fetcher.inline(request)
        assert first.slot

        async def second() -> None:
            with fetcher.scope():
                await fetcher.inline(request)

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the one slot is the first job's
        with fetcher.scope():  # text only: no slot asked
            assert await fetcher.inline({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await asyncio.wait_for(waiting, 5)  # the first job's scope ended: its slot went to the second
    with fetcher.scope():
        await asyncio.wait_for(fetcher.inline(request), 5)  # and came back when the second's ended
    await fetcher.close()
