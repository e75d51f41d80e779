"""The deliverer's HTTP/1.1 client and sender against real servers that answer the ways servers do:
lengths, chunks, close-delimited bodies, 1xx, answers a byte at a time, oversized bodies, idle
connections the server closed, garbage, TLS; and the SSRF guard on names and literals."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from config.settings import Settings
from llm_router.testing.redis_server import free_port
from worker.http11 import Client, HTTPError, Target
from worker.webhooks.sender import FIXED_HEADERS, Sender

Reply = Callable[[bytes, int], bytes | None]  # (request, its number on the connection) → bytes to send


class Server:
    """A raw TCP server answering each request with ``reply``; counts connections and requests."""

    def __init__(self, reply: Reply, *, close_after: int | None = None, trickle: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.trickle = trickle
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
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                n += 1
                answer = self.reply(request, n)
                if answer is None:
                    await asyncio.sleep(60)
                    return
                if self.trickle:
                    for i in range(len(answer)):
                        writer.write(answer[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(0)
                else:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after is not None and n >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=tls)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def fixed(answer: bytes) -> Reply:
    return lambda _request, _n: answer


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(_AllowAll())
    yield c
    await c.close()


class _AllowAll:
    """The guard is the sender's business; these tests are about HTTP."""

    async def resolve(self, host: str, port: int, family: int = 0) -> list[dict[str, str]]:
        return [{"host": "127.0.0.1"}]


async def post(
    client: Client, server: Server, path: str = "/hook", max_bytes: int = 4096
) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{server.port}{path}"
    target = Target.of("http", "127.0.0.1", server.port, url, FIXED_HEADERS)
    resp = await client.post(
        target, b"webhook-id: msg_1\r\n", b'{"a":1}', connect_timeout=2, max_bytes=max_bytes
    )
    return resp.status, resp.body


CASES: list[tuple[str, bytes, int, bytes, bool]] = [
    # (case, answer, status, body read, connection reused for the next request)
    ("content-length", OK, 200, b"ok", True),
    ("no body", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    ("empty body", b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", 202, b"", True),
    (
        "chunked, with a trailer",
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbad \r\n5;x=1\r\nthing\r\n0\r\nX-T: 1\r\n\r\n",
        500,
        b"bad thing",
        True,
    ),
    ("1xx first", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, 200, b"ok", True),
    (
        "connection: close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        200,
        b"ok",
        False,
    ),
    ("HTTP/1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
    ("410", b"HTTP/1.1 410 Gone\r\nContent-Length: 4\r\n\r\ngone", 410, b"gone", True),
]


@pytest.mark.parametrize(
    ("answer", "status", "body", "reused"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "a byte at a time"])
async def test_answers_are_read_and_connections_kept_only_when_it_is_safe(
    client: Client, answer: bytes, status: int, body: bytes, reused: bool, trickle: bool
) -> None:
    server = await Server(fixed(answer), trickle=trickle).start()  # it would keep every connection
    try:
        assert await post(client, server) == (status, body)
        assert await post(client, server) == (status, body)
    finally:
        await server.stop()
    assert server.connections == (1 if reused else 2)
    first = server.requests[0]
    assert first.startswith(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
    assert b"Content-Type: application/json\r\n" in first and b"webhook-id: msg_1\r\n" in first
    assert first.endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


async def test_a_close_delimited_body_and_an_oversized_one_are_cut_at_the_limit(client: Client) -> None:
    server = await Server(fixed(b"HTTP/1.1 503 Busy\r\n\r\n" + b"x" * 100), close_after=1).start()
    long = await Server(fixed(b"HTTP/1.1 500 No\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100000)).start()
    try:
        assert await post(client, server, max_bytes=10) == (503, b"x" * 10)
        assert await post(client, long, max_bytes=10) == (500, b"y" * 10)
        assert await post(client, long, max_bytes=10) == (500, b"y" * 10)
    finally:
        await server.stop()
        await long.stop()
    assert long.connections == 2  # the rest of a long body is never read: that connection is dropped


async def test_an_idle_connection_the_server_closed_is_replaced_once(client: Client) -> None:
    server = await Server(fixed(OK), close_after=1).start()  # closes after each answer, keep-alive or not
    try:
        for _ in range(3):
            assert await post(client, server) == (200, b"ok")
            await asyncio.sleep(0.05)  # the close arrives while the connection sits idle
    finally:
        await server.stop()
    assert server.connections == 3 and len(server.requests) == 3


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
    ],
)
async def test_garbage_is_an_error_not_a_status(client: Client, answer: bytes) -> None:
    server = await Server(fixed(answer), close_after=1).start()
    try:
        with pytest.raises((HTTPError, ConnectionError)):
            await post(client, server)
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


async def test_tls_checks_the_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server = await Server(fixed(OK)).start(server_tls)
    settings = Settings(_env_file=None, webhook_allow="127.0.0.1/32", webhook_timeout_s=3)
    trusting = ssl.create_default_context(cafile=str(cert))
    untrusting, trusted = Sender(settings), Sender(settings, ssl_context=trusting)
    url = f"https://127.0.0.1:{server.port}/hook"
    try:
        refused = await untrusting.post(url, b"{}", {"webhook-id": "msg_1"})
        assert refused.status is None and refused.error.startswith("TLS: ")  # type: ignore[union-attr]
        assert (await trusted.post(url, b"{}", {"webhook-id": "msg_1"})).ok
    finally:
        await untrusting.close()
        await trusted.close()
        await server.stop()


async def test_the_sender_guards_names_and_literals_and_bounds_time() -> None:
    hangs = await Server(lambda _r, _n: None).start()
    allowed = Sender(Settings(_env_file=None, webhook_allow="127.0.0.1/32", webhook_timeout_s=0.3))
    # refusals do not wait on the timeout: a long one, so that a busy machine's first name lookup
    # (a thread started for getaddrinfo: 0.5 s in a CI run) is not taken for a silent server
    strict = Sender(Settings(_env_file=None, webhook_timeout_s=10))
    try:
        by_name = await strict.post(f"http://localhost:{hangs.port}/h", b"{}", {})
        assert by_name.refused and "private or internal" in (by_name.error or "")
        literal = await strict.post(f"http://127.0.0.1:{hangs.port}/h", b"{}", {})
        assert literal.refused and "not allowed" in (literal.error or "")
        metadata = await allowed.post("http://169.254.169.254/latest/meta-data", b"{}", {})
        assert metadata.refused
        slow = await allowed.post(f"http://localhost:{hangs.port}/h", b"{}", {})
        assert (slow.status, slow.error, slow.refused) == (None, "no answer within 0.3 s", False)
        closed = await allowed.post(f"http://127.0.0.1:{free_port()}/h", b"{}", {})
        assert closed.status is None and closed.error.startswith("cannot connect")  # type: ignore[union-attr]
    finally:
        await allowed.close()
        await strict.close()
        await hangs.stop()


def test_the_request_line_is_ascii_and_goes_to_the_host_the_guard_checked() -> None:
    idn = Target.of("https", "xn--bcher-kva.example", 443, "https://Bücher.example/hook/ä?x=ü", b"")
    assert idn.head == b"POST /hook/%C3%A4?x=%C3%BC HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n"
    assert (idn.host, idn.port) == ("xn--bcher-kva.example", 443)
    v6 = Target.of("http", "::1", 8080, "http://[::1]:8080", b"X: y\r\n")
    assert v6.head == b"POST / HTTP/1.1\r\nHost: [::1]:8080\r\nX: y\r\n"
