"""The floor under the interactive row: what the messages of a request through the queue cost on
this machine when no process does any work but pass them on.

An interactive request is eight messages on the critical path (``hops.py``): client → server →
Redis → worker → upstream → worker → Redis → server → client; a direct call is two. This starts
four relay processes standing in for the server, Redis, the worker and the upstream (plain
``selectors`` loops on TCP loopback, ``TCP_NODELAY``, no parsing: each message is forwarded as it
is read) and times a message round the same eight hops against the two of a direct call:

* **interleaved**: each pair follows 12 ms of CPU work in the client (what the LiteLLM proxy's
  request costs before ours in ``http_latency.py``), so the relays have gone idle, as they do there;
* **in a row**: ten chains back to back, as ``http_latency.py``'s "in a row" rows.

The difference, chain minus direct, is the part of the interactive overhead that six more messages
between processes cost here before any of our code runs: the row's 2 ms target is measured on top
of it.

It then times one step of ours the same two ways: Redis' submit script for one job (a private
``redis-server``, ``Store.submit_batch`` as the producer calls it), 500 submits back to back and 500
with 5 ms of sleep before each, the script's own time as Redis counts it (``INFO commandstats``):
the same work, done by a process that had gone idle; and a step of Python the same way: validating a
chat request and building its submit command (``Validator.prepare``, ``Store.submit_command``), in
this process, timed around the step, after 0 to 20 ms asleep and after as long spinning (the process
never leaves its CPU, so what slows the step is time passing, not the sleep). Not part of
``make bench`` (it measures the machine, not llm-router).

    python bench/hop_floor.py -n 2000
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import selectors
import socket
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from output import write_json  # bench/output.py, beside this script

# who sends a message on to whom, by where it came from: the request's path and the answer's
ROUTES = {
    "server": {"client": "redis", "redis": "client"},
    "redis": {"server": "worker", "worker": "server"},
    "worker": {"redis": "upstream", "upstream": "redis"},
}
REQUEST = b"x" * 700  # about a chat request's size on the wire


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _accept(listener: socket.socket) -> socket.socket:
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _listener() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, listener.getsockname()[1]


def _relay(name: str, listener: socket.socket, next_port: int | None, ready: Any) -> None:
    """Accept the hop before (and, for the upstream, the direct client); connect to the hop after;
    forward each read as it came, by the routing table (the upstream answers whoever asked)."""
    peers: dict[str, socket.socket] = {}
    if next_port is not None:
        peers[{"server": "redis", "redis": "worker", "worker": "upstream"}[name]] = _connect(next_port)
    ready.send(True)
    before = {
        "server": ["client"],
        "redis": ["server"],
        "worker": ["redis"],
        "upstream": ["worker", "direct"],
    }[name]
    for peer in before:
        peers[peer] = _accept(listener)
    by_fd = {sock.fileno(): peer for peer, sock in peers.items()}
    selector = selectors.DefaultSelector()
    for sock in peers.values():
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            if not data:
                return
            source = by_fd[key.fd]
            target = source if name == "upstream" else ROUTES[name][source]
            peers[target].sendall(data)


def _burn(ms: float) -> None:
    """CPU work that touches memory, as a Python web server's request does."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        _ = [str(i) for i in range(2000)]


def _round(sock: socket.socket) -> float:
    start = time.perf_counter()
    sock.sendall(REQUEST)
    got = 0
    while got < len(REQUEST):
        got += len(sock.recv(65536))
    return (time.perf_counter() - start) * 1000


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(n: int) -> dict[str, Any]:
    names = ["upstream", "worker", "redis", "server"]  # each connects to the one started before it
    procs, ports = [], {}
    for name in names:
        listener, port = _listener()
        parent, child = multiprocessing.Pipe()
        next_port = {"worker": "upstream", "redis": "worker", "server": "redis"}.get(name)
        proc = multiprocessing.Process(
            target=_relay, args=(name, listener, ports[next_port] if next_port else None, child), daemon=True
        )
        proc.start()
        parent.recv()
        listener.close()
        procs.append(proc)
        ports[name] = port
    chain, direct = _connect(ports["server"]), None
    time.sleep(0.05)  # the server accepted the chain's client before the upstream accepts the direct one
    direct = _connect(ports["upstream"])
    for _ in range(200):
        _round(chain), _round(direct)
    interleaved: dict[str, list[float]] = {"direct": [], "chain": []}
    in_a_row: dict[str, list[float]] = {"direct": [], "chain": []}
    for i in range(n):
        for path, sock in (("direct", direct), ("chain", chain))[:: 1 if i % 2 else -1]:
            _burn(12)
            interleaved[path].append(_round(sock))
    for i in range(n // 10):
        for path, sock in (("direct", direct), ("chain", chain))[:: 1 if i % 2 else -1]:
            in_a_row[path].extend(_round(sock) for _ in range(10))
    chain.close(), direct.close()
    for proc in procs:
        proc.join(timeout=2)
        proc.kill()
    out = {}
    for mode, values in (("interleaved", interleaved), ("in a row", in_a_row)):
        out[mode] = {
            "direct_p50_ms": statistics.median(values["direct"]),
            "chain_p50_ms": statistics.median(values["chain"]),
            "chain_p99_ms": _pct(values["chain"], 0.99),
            "floor_p50_ms": statistics.median(values["chain"]) - statistics.median(values["direct"]),
        }
    return out


async def _script_after_idle(submits: int) -> dict[str, float]:
    """Redis' µs per single-job submit script, back to back and after 5 ms idle."""
    from redis.asyncio import Redis

    from llm_router.store import Store
    from llm_router.testing.jobs import new_job
    from llm_router.testing.redis_server import RedisServer

    out = {}
    with RedisServer() as server:
        redis = Redis(host="127.0.0.1", port=server.port)
        store = Store(redis, queue_name="floor", record_ttl_s=100)
        for _ in range(2):  # the second round is the one kept: the first warms the script cache
            for name, idle_s in (("back to back", 0.0), ("after 5 ms idle", 0.005)):
                await redis.config_resetstat()
                for i in range(submits):
                    if idle_s:
                        await asyncio.sleep(idle_s)
                    job = new_job(f"{name[:4]}-{i}-{time.time_ns()}")
                    await store.submit_batch([store.submit_command(job, None)])
                stats = await redis.info("commandstats")
                out[name] = stats["cmdstat_evalsha"]["usec_per_call"]
                await redis.flushdb()
        await redis.aclose()
    return out


IDLE_MS = (0, 0.5, 2, 5, 20)  # the gaps before a step, for the Python curve


def _python_after_idle(steps: int) -> dict[str, dict[float, float]]:
    """µs (median) to validate a chat request and build its submit command, after each of
    ``IDLE_MS`` asleep, and after the same spent spinning (the process never off its CPU)."""
    import os

    import orjson
    from redis.asyncio import Redis

    from config.catalog import Catalog
    from config.settings import Settings
    from llm_router.store import Store
    from llm_router.testing.sim_env import simulated_env
    from producer.validation import Validator

    env = simulated_env(os.environ, redis_url="redis://127.0.0.1:1", sim_url="http://127.0.0.1:1")
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:1", queue_name="floor")
    validator = Validator(Catalog.load(settings, env=env), settings)
    store = Store(Redis(port=1), queue_name="floor", record_ttl_s=100)  # never connects: it only packs

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    out: dict[str, dict[float, float]] = {"asleep": {}, "spinning": {}}
    for mode, wait in (("asleep", time.sleep), ("spinning", spin)):
        for idle_ms in IDLE_MS:
            times = []
            for i in range(steps if idle_ms < 20 else steps // 3):
                body = orjson.dumps(
                    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Say {i}."}]}
                )
                if idle_ms:
                    wait(idle_ms / 1000)
                start = time.perf_counter()
                store.submit_command(validator.prepare(body, now=time.time(), new_id=f"j{i}"), None)
                times.append((time.perf_counter() - start) * 1e6)
            out[mode][idle_ms] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="pairs of round trips, interleaved")
    args = parser.parse_args()
    hops = run(args.n)
    for mode, row in hops.items():
        print(
            f"{mode:12} direct p50 {row['direct_p50_ms']:.3f} ms, eight hops p50 {row['chain_p50_ms']:.3f} ms"
            f" (p99 {row['chain_p99_ms']:.3f}): six more messages cost {row['floor_p50_ms']:.3f} ms"
        )
    python = _python_after_idle(300)
    for mode, curve in python.items():
        steps = ", ".join(f"{ms:g} ms {us:.1f}" for ms, us in curve.items())
        print(f"Python, validate a request and build its submit (µs), after {mode}: {steps}")
    script = asyncio.run(_script_after_idle(500))
    print(
        f"Redis' submit script, one job: {script['back to back']:.1f} µs back to back,"
        f" {script['after 5 ms idle']:.1f} µs after 5 ms idle"
        f" ({script['after 5 ms idle'] / script['back to back']:.1f} times)"
    )
    result = {"date": datetime.now(UTC).isoformat(), "pairs": args.n, "hops": hops, "python_us": python}
    write_json("hop-floor", {**result, "redis_submit_script_us": script})


if __name__ == "__main__":
    main()
