"""Unstreamed provider calls through the lean client (``worker.provider_client``) against real servers
that answer the ways providers and their proxies do: kept-alive connections (and ones the server
closed meanwhile), lengths, chunks, gzip, answers cut short, silence, refused connects, TLS."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from llm_router.errors import BadResponse, RateLimited, UpstreamConnectionError, UpstreamTimeout
from llm_router.testing.redis_server import free_port
from worker.http import Timeouts
from worker.provider_client import MAX_BODY, ProviderClient
from worker.providers import openai
from worker.providers.base import HttpCall

# (request, its number on its connection) → the bytes to answer, or None to stay silent; after an
# answer that ends the connection (``CUT`` + bytes, HTTP/1.0, ``Connection: close``) the server closes it
CUT = b"CUT:"
Reply = Callable[[bytes, int], bytes | None]

ANSWER = b'{"id":"c1","object":"chat.completion","choices":[]}'
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(ANSWER),
    ANSWER,
)
LIMITS = Timeouts(connect_s=1.0, headers_s=None, first_token_s=5.0, idle_s=5.0, total_s=3.0)
KEY = "sk-test-0123456789abcdef"


class Server:
    """A raw TCP server: each request answered by ``reply``; counts connections and requests."""

    def __init__(self, reply: Reply, *, cut: int | None = None) -> None:
        self.reply = reply
        self.cut = cut  # close the connection after this many bytes of an answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                n += 1
                answer = self.reply(self.requests[-1], n)
                if answer is None:
                    await asyncio.sleep(30)
                    return
                last = answer.startswith((CUT, b"HTTP/1.0")) or b"connection: close" in answer.lower()
                answer = answer.removeprefix(CUT)
                writer.write(answer[: self.cut] if self.cut is not None else answer)
                await writer.drain()
                if last or self.cut is not None:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=tls)
        return self

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/v1/chat/completions"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def fixed(answer: bytes) -> Reply:
    return lambda _request, _n: answer


@pytest.fixture
async def client() -> AsyncIterator[ProviderClient]:
    c = ProviderClient(Settings(_env_file=None))
    yield c
    await c.close()


async def serving(reply: Reply, **kwargs: int) -> Server:
    return await Server(reply, **kwargs).start()


def call(url: str, **headers: str) -> HttpCall:
    return HttpCall(
        "POST", url, {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **headers}, b"{}"
    )


async def send(
    client: ProviderClient, url: str, limits: Timeouts = LIMITS, deadline_s: float = 30
) -> tuple[int, dict[str, str], bytes]:
    return await client.send(call(url), limits, deadline_at=time.time() + deadline_s)


def chunked(body: bytes, *, encoding: str | None = None) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    if encoding:
        head += b"Content-Encoding: %s\r\n" % encoding.encode()
    halves = (body[: len(body) // 2], body[len(body) // 2 :])
    return head + b"\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(h), h) for h in halves if h) + b"0\r\n\r\n"


def sized(body: bytes, *, encoding: str | None = None) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body)
    if encoding:
        head += b"Content-Encoding: %s\r\n" % encoding.encode()
    return head + b"\r\n" + body


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        pytest.param(sized(ANSWER), True, id="content-length"),
        pytest.param(chunked(ANSWER), True, id="chunked"),
        pytest.param(sized(gzip.compress(ANSWER), encoding="gzip"), True, id="gzip"),
        pytest.param(chunked(gzip.compress(ANSWER), encoding="gzip"), True, id="chunked-gzip"),
        pytest.param(sized(zlib.compress(ANSWER), encoding="deflate"), True, id="deflate"),
        pytest.param(sized(raw_deflate(ANSWER), encoding="deflate"), True, id="raw-deflate"),
        pytest.param(b"HTTP/1.0 200 OK\r\n\r\n" + ANSWER, False, id="http/1.0-until-close"),
        pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + ANSWER, False, id="close-delimited"),
    ],
)
async def test_answers_are_read_whole_decoded_and_connections_kept_when_safe(
    client: ProviderClient, answer: bytes, reused: bool
) -> None:
    server = await serving(fixed(answer))
    try:
        for _ in range(3):
            status, _headers, body = await send(client, server.url())
            assert (status, body) == (200, ANSWER)
        assert server.connections == (1 if reused else 3)
        request = server.requests[0].lower()
        assert b"accept-encoding: gzip, deflate\r\n" in request and b"user-agent: llm-router/1\r\n" in request
        assert request.startswith(b"post /v1/chat/completions http/1.1\r\nhost: 127.0.0.1:")
    finally:
        await server.stop()


async def test_a_429_reaches_the_adapter_with_its_retry_after_and_lower_cased_headers(
    client: ProviderClient,
) -> None:
    error = b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}'
    answer = (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
        b"X-RateLimit-Remaining-Requests: 0\r\nContent-Length: %d\r\n\r\n%s" % (len(error), error)
    )
    server = await serving(fixed(answer))
    try:
        status, headers, body = await send(client, server.url())
        assert (
            status == 429
            and headers["retry-after"] == "7"
            and headers["x-ratelimit-remaining-requests"] == "0"
        )
        mapped = openai.classify_error(status, headers, body)
        assert isinstance(mapped, RateLimited) and mapped.retry_after == 7.0
        assert "Rate limit reached" in mapped.message
        assert server.connections == 1 and (await send(client, server.url()))[0] == 429
        assert server.connections == 1  # an error answer read whole keeps its connection
    finally:
        await server.stop()


async def test_a_kept_connection_the_server_closed_is_replaced_once(client: ProviderClient) -> None:
    # the second request on a connection finds it closed with nothing answered (an idle timeout that
    # raced the request): the call goes again, once, on a new connection
    server = await serving(lambda _request, n: OK if n == 1 else CUT)
    try:
        assert (await send(client, server.url()))[0] == 200
        assert (await send(client, server.url()))[0] == 200
        assert (server.connections, len(server.requests)) == (2, 3)
    finally:
        await server.stop()


async def test_an_answer_cut_after_its_first_bytes_is_never_sent_again(client: ProviderClient) -> None:
    keep = await serving(fixed(OK))
    server = await serving(fixed(OK), cut=len(OK) - 5)  # the head and part of the body, then closed
    headless = await serving(fixed(OK), cut=9)  # part of the status line
    try:
        with pytest.raises(BadResponse, match="closed before the answer's end"):
            await send(client, server.url())
        with pytest.raises(UpstreamConnectionError, match="calling the provider"):
            await send(client, headless.url())
        assert (len(server.requests), len(headless.requests)) == (1, 1)
        # on a kept connection too: once part of an answer came, the request is not sent again
        assert (await send(client, keep.url()))[0] == 200
        cut_later = await serving(lambda _request, n: OK if n == 1 else CUT + OK[:20])
        try:
            assert (await send(client, cut_later.url()))[0] == 200
            with pytest.raises(UpstreamConnectionError):
                await send(client, cut_later.url())
            assert (cut_later.connections, len(cut_later.requests)) == (1, 2)
        finally:
            await cut_later.stop()
    finally:
        for s in (keep, server, headless):
            await s.stop()


async def test_silence_is_bounded_by_the_headers_wait_then_by_the_whole_call(client: ProviderClient) -> None:
    silent = await serving(fixed(None))  # type: ignore[arg-type]
    stalled = await serving(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"), cut=None)
    try:
        quick_headers = Timeouts(connect_s=1.0, headers_s=0.2, first_token_s=5, idle_s=5, total_s=3.0)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await send(client, silent.url(), quick_headers)
        assert info.value.message == "no response headers from the provider within 0.2 s"
        assert 0.2 <= time.monotonic() - started < 1.0
        short = Timeouts(connect_s=1.0, headers_s=None, first_token_s=5, idle_s=5, total_s=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as info:
            await send(client, stalled.url(), short)  # headers came, the body never ends
        assert info.value.message == "TimeoutError calling the provider"
        assert 0.3 <= time.monotonic() - started < 1.0
        # the job's deadline cuts a call sooner than its own limit
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await send(client, silent.url(), LIMITS, deadline_s=0.2)
        assert time.monotonic() - started < 1.0
    finally:
        await silent.stop()
        await stalled.stop()


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen backlog is full: a connect to it hangs until the client gives up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    yield port
    for c in fillers:
        c.close()
    server.close()


async def test_connect_failures_name_the_reason_never_the_address(
    client: ProviderClient, full_backlog: int
) -> None:
    port = free_port()
    with pytest.raises(UpstreamConnectionError) as refused:
        await send(client, f"http://127.0.0.1:{port}/v1/chat/completions")
    assert refused.value.message == "ConnectionRefusedError calling the provider: connection refused"
    quick = Timeouts(connect_s=0.2, headers_s=None, first_token_s=5, idle_s=5, total_s=3.0)
    with pytest.raises(UpstreamTimeout) as hung:
        await send(client, f"http://127.0.0.1:{full_backlog}/v1/chat/completions", quick)
    assert hung.value.message == "ConnectTimeout calling the provider: no connection within 0.2 s"
    with pytest.raises(UpstreamConnectionError) as unknown:
        await send(client, "http://no-such-host.invalid/v1/chat/completions")
    assert unknown.value.message.startswith("gaierror calling the provider: ")
    for exc in (refused.value, hung.value, unknown.value):
        assert "127.0.0.1" not in exc.message and "invalid" not in exc.message


async def test_oversized_and_undecodable_answers_are_bad_responses(client: ProviderClient) -> None:
    huge = await serving(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)))
    bomb = gzip.compress(b"\0" * (MAX_BODY + 1))
    answers = [sized(bomb, encoding="gzip"), sized(b"not gzip at all", encoding="gzip"), OK]
    mixed = await serving(lambda _request, n: answers[n - 1])
    try:
        with pytest.raises(BadResponse, match="larger than"):
            await send(client, huge.url())
        with pytest.raises(BadResponse, match="larger than"):
            await send(client, mixed.url())
        with pytest.raises(BadResponse, match="does not decode"):
            await send(client, mixed.url())
        assert (await send(client, mixed.url()))[0] == 200
    finally:
        await huge.stop()
        await mixed.stop()


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent(client: ProviderClient) -> None:
    server = await serving(fixed(OK))
    try:
        with pytest.raises(UpstreamConnectionError, match="line break"):
            await client.send(
                call(server.url(), **{"X-Extra": "a\r\nX-Evil: 1"}), LIMITS, deadline_at=time.time() + 5
            )
        assert server.requests == []
    finally:
        await server.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_checks_the_certificate_and_the_host_name(tmp_path: Path, client: ProviderClient) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await Server(fixed(OK)).start(server_tls)
    trusting = ProviderClient(
        Settings(_env_file=None), ssl_context=ssl.create_default_context(cafile=str(cert))
    )
    try:
        with pytest.raises(UpstreamConnectionError) as untrusted:
            await send(client, server.url("https"))  # the default context: our CA is not in it
        assert untrusted.value.message.startswith("SSLCertVerificationError calling the provider: ")
        for _ in range(2):
            assert (await send(trusting, server.url("https")))[0] == 200
        assert server.connections == 1  # kept (the refused handshake never reached the server's handler)
        with pytest.raises(UpstreamConnectionError) as mismatch:
            await send(trusting, server.url("https", host="localhost"))  # the cert names 127.0.0.1 only
        assert "localhost" not in mismatch.value.message and "mismatch" in mismatch.value.message.lower()
    finally:
        await trusting.close()
        await server.stop()


async def test_as_many_connections_are_kept_as_calls_can_be_in_flight() -> None:
    # 100 calls at once open 100 connections; the next 100 reuse them all (a pool of 64 would not)
    client = ProviderClient(Settings(_env_file=None, max_jobs=100))
    server = await serving(fixed(OK))
    try:
        for _ in range(2):
            answers = await asyncio.gather(*(send(client, server.url()) for _ in range(100)))
            assert {status for status, _, _ in answers} == {200}
        assert (server.connections, len(server.requests)) == (100, 200)
    finally:
        await client.close()
        await server.stop()
