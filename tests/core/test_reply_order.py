"""Which socket Redis writes first: a message a script publishes for someone waiting (a job's end
for the server answering its caller, a job handed to a waiting worker) or the reply to the
script's caller. Each write that wakes a sleeping process costs its writer that wake-up, so the
waited-for message goes first (``AutoPipeline.send``'s ``publishes_first``, ``Store._send_raw``).

The order is read from the kernel's receive timestamps (``SO_TIMESTAMPNS``) of each socket, which
Redis' writes set one after the other: no timing of ours, nothing to race.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hiredis import pack_command
from redis.asyncio import Redis

from llm_router.autopipe import PING, AutoPipeline
from llm_router.store import FinishReply, Store, SubmitReply
from llm_router.testing.jobs import new_job
from llm_router.testing.redis_server import RedisServer

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's value, where Python lacks the name
PUBLISH = "redis.call('PUBLISH', KEYS[1], ARGV[1]) return ARGV[1]"  # the reply says which call


def _stamped(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(5)
    return sock


def _receive(sock: socket.socket) -> tuple[int, bytes]:
    """What arrived next and when the kernel received it (ns)."""
    data, ancillary, _, _ = sock.recvmsg(1 << 16, 64)
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanos = struct.unpack("qq", value[:16])
            return seconds * 1_000_000_000 + nanos, data
    raise AssertionError("no receive timestamp")


@pytest.fixture(scope="module", autouse=True)
def stamping() -> Iterator[None]:
    """Receive timestamps on from the first packet of the tests: the kernel turns them on for the
    whole system a moment after the first socket asks (deferred work), and a packet received before
    carries none. One socket pair keeps them asked for, until a packet comes stamped, and for the
    module's tests (they stay on while any socket wants them)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    receiver.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    receiver.settimeout(5)
    deadline = time.monotonic() + 5
    try:
        while True:
            sender.sendall(b"x")
            _, ancillary, _, _ = receiver.recvmsg(16, 64)
            if any(kind == SO_TIMESTAMPNS for _, kind, _ in ancillary):
                break
            assert time.monotonic() < deadline, "the kernel gives no receive timestamps"
            time.sleep(0.01)
        yield
    finally:
        for sock in (sender, receiver, listener):
            sock.close()


class Subscriber:
    """A raw subscription whose messages carry their receive time."""

    def __init__(self, port: int, channel: str) -> None:
        self.sock = _stamped(port)
        self.sock.sendall(pack_command(("SUBSCRIBE", channel)))
        _, confirmed = _receive(self.sock)
        assert b"subscribe" in confirmed

    def next(self) -> tuple[int, bytes]:
        return _receive(self.sock)


class Relay:
    """A TCP relay to Redis: it keeps each chunk its client wrote, and when each chunk of Redis'
    replies reached it (the kernel's receive time on its own socket to Redis)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.written: list[bytes] = []
        self.replies: list[tuple[int, bytes]] = []
        self.replied = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = _stamped(self.redis_port)
            upstream.settimeout(None)
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        while chunk := client.recv(1 << 16):
            self.written.append(chunk)
            upstream.sendall(chunk)
        upstream.close()

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                at, chunk = _receive(upstream)
                if not chunk:
                    break
                with self.replied:
                    self.replies.append((at, chunk))
                    self.replied.notify_all()
                client.sendall(chunk)
        except (OSError, AssertionError):
            pass
        client.close()

    def reply_containing(self, piece: bytes) -> int:
        """When the reply chunk holding ``piece`` reached the relay."""
        with self.replied:
            found = self.replied.wait_for(
                lambda: next((at for at, chunk in self.replies if piece in chunk), None), timeout=5
            )
        assert found, f"no reply holding {piece!r}"
        return found

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[Relay]:
    relay = Relay(redis_server.port)
    yield relay
    relay.close()


def test_redis_writes_the_callers_reply_before_what_its_script_published_unless_it_had_one_pending(
    redis_server: RedisServer,
) -> None:
    # the premise: Redis writes the client with the newest pending reply first. A script's caller
    # gets its reply after the script published, so it is written first; with a PING's reply
    # already pending (same write, so same read), the subscriber is
    subscriber = Subscriber(redis_server.port, "order:premise")
    caller = _stamped(redis_server.port)
    try:
        for ping in (False, True, False, True):
            caller.sendall((PING if ping else b"") + pack_command(("EVAL", PUBLISH, 1, "order:premise", "x")))
            published_at, message = subscriber.next()
            replied_at, reply = _receive(caller)
            assert message.endswith(b"$1\r\nx\r\n")
            assert reply == (b"+PONG\r\n$1\r\nx\r\n" if ping else b"$1\r\nx\r\n")
            assert (published_at < replied_at) is ping, (ping, replied_at - published_at)
    finally:
        subscriber.sock.close()
        caller.close()


@pytest.mark.parametrize("in_flight", [False, True], ids=["written-at-once", "in-a-batch"])
async def test_publishes_first_has_redis_write_the_message_before_the_reply(
    redis_server: RedisServer, relay: Relay, in_flight: bool
) -> None:
    client = Redis(host="127.0.0.1", port=relay.port)
    pipe = AutoPipeline(client)
    subscriber = Subscriber(redis_server.port, "order:pipe")
    try:
        assert await pipe.call(pack_command(("PING",))) is not None  # the pipeline holds a connection
        for first in (True, False):
            before = pack_command(("ECHO", f"before-{first}"))
            ahead = pipe.send(before) if in_flight else None  # the command joins the next batch
            script = pack_command(("EVAL", PUBLISH, 1, "order:pipe", f"m-{first}"))
            reply = pipe.send(script, publishes_first=first)
            after = pipe.send(pack_command(("ECHO", f"after-{first}")))
            assert await reply == f"m-{first}".encode()  # its own reply, not the PING's
            assert await after == f"after-{first}".encode()
            if ahead is not None:
                assert await ahead == f"before-{first}".encode()
            published_at, message = await asyncio.to_thread(subscriber.next)
            assert message.endswith(f"m-{first}\r\n".encode())
            replied_at = await asyncio.to_thread(relay.reply_containing, f"m-{first}".encode())
            assert (published_at < replied_at) is first, (first, replied_at - published_at)
    finally:
        subscriber.sock.close()
        await pipe.aclose()
        await client.aclose()


async def test_a_submit_and_a_finish_go_behind_a_ping_in_the_same_write(relay: Relay) -> None:
    client = Redis(host="127.0.0.1", port=relay.port, db=9)
    store = Store(client, queue_name="order-q", record_ttl_s=100)
    try:
        await client.delete("llm-router:job:t/order-1")
        assert await store.submit_batch([store.submit_command(new_job("order-1"))]) == [SubmitReply.CREATED]
        submits = [chunk for chunk in relay.written if store._submit.sha.encode() in chunk]
        assert submits and all(chunk.startswith(PING) for chunk in submits)

        finished = await store.finish("t/order-1", {"status": "failed"})
        assert finished.reply == FinishReply.WRITTEN
        finishes = [chunk for chunk in relay.written if store._finish.sha.encode() in chunk]
        assert finishes and all(chunk.startswith(PING) for chunk in finishes)
    finally:
        await store.pipe.aclose()
        await client.aclose()
