"""Where an interactive request's time goes, message by message, as the loopback saw it.

``http_latency.py`` splits a request by the timestamps our processes write; this watches the wire
instead: ``tcpdump`` on ``lo`` records every message (a TCP segment carrying data) between the
client, ``llm-router serve``, Redis, the worker and the simulator while requests go one at a time,
and the most common sequence of messages per request is printed with each message's size, the gap
since the message before it (the sender's work, or Redis' script, plus a wake-up) and its time
since the request left the client. Nothing in our code is instrumented, so nothing is hidden: this
is how the poll-step wait of a claim (2.3 ms of a 5 ms request) was found.

Needs ``tcpdump`` and the right to capture (root); not part of ``make bench``.

    python bench/hops.py -n 300
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from http_latency import CHAT, WARMUP, _pct, _stack  # bench/http_latency.py, beside this script
from output import write_json  # bench/output.py

SEGMENT = re.compile(r"(\d+\.\d+) IP 127\.0\.0\.1\.(\d+) > 127\.0\.0\.1\.(\d+): tcp (\d+)")
SOCKET = re.compile(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:(\d+)\s+users:\(\(\"[^\"]+\",pid=(\d+)")


def _role(pid: str) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for name in (b"serve", b"worker", b"simulate"):
        if name in args:
            return {b"serve": "server", b"worker": "worker", b"simulate": "sim"}[name]
    if any(b"redis-server" in a for a in args):  # Redis rewrites its command line
        return "redis"
    return "client" if pid == str(os.getpid()) else f"pid {pid}"


def _owners() -> dict[str, str]:
    """Local port → the role of the process holding it (every loopback TCP socket right now)."""
    out = subprocess.run(["ss", "-tnpaH"], capture_output=True, text=True, check=True).stdout
    roles: dict[str, str] = {}
    by_pid: dict[str, str] = {}
    for line in out.splitlines():
        if m := SOCKET.search(line):
            pid = m.group(3)
            roles[m.group(1)] = by_pid.setdefault(pid, _role(pid))
    return roles


def timeline(capture: str, owners: dict[str, str], skip: int) -> dict[str, Any]:
    """The requests in ``capture`` (tcpdump -q -tt lines), cut at each client → server message; the
    most common message sequence, with per-message medians."""
    messages = []
    for line in capture.splitlines():
        if m := SEGMENT.match(line):
            t, src, dst, size = (
                float(m.group(1)),
                owners.get(m.group(2), "?"),
                owners.get(m.group(3), "?"),
                int(m.group(4)),
            )
            # a connection opened since the snapshot: the server's only other peer is Redis
            if src == "?" and dst == "server":
                src = "client"
            elif dst == "?" and src == "server":
                dst = "client"
            messages.append((t, src, dst, size))
    requests: list[list[tuple[float, str, str, int]]] = []
    current: list[tuple[float, str, str, int]] | None = None
    for msg in messages:
        if msg[1] == "client" and msg[2] == "server":
            current = [msg]
            requests.append(current)
        elif current is not None:
            current.append(msg)
            if msg[1] == "server" and msg[2] == "client":
                current = None
    requests = [r for r in requests[skip:] if r[-1][1:3] == ("server", "client")]
    shapes = collections.Counter(tuple(m[1:3] for m in r) for r in requests)
    if not shapes:
        raise SystemExit("no request was seen whole on the wire (is tcpdump allowed to capture?)")
    shape, count = shapes.most_common(1)[0]
    chosen = [r for r in requests if tuple(m[1:3] for m in r) == shape]
    rows = []
    for i, (src, dst) in enumerate(shape):
        gaps = [(r[i][0] - r[i - 1][0]) * 1e6 if i else 0.0 for r in chosen]
        at = [(r[i][0] - r[0][0]) * 1e6 for r in chosen]
        sizes = sorted(r[i][3] for r in chosen)
        rows.append(
            {
                "from": src,
                "to": dst,
                "bytes": sizes[len(sizes) // 2],
                "gap_us_p50": _pct(gaps, 0.5),
                "at_us_p50": _pct(at, 0.5),
            }
        )
    return {"requests": len(requests), "with_this_shape": count, "messages": rows}


async def run(n: int) -> dict[str, Any]:
    async with _stack() as (_, paths):
        url, key = paths["llm-router"]
        ports = {p for u, _ in paths.values() for p in re.findall(r":(\d+)/", u)}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:
            for _ in range(WARMUP):
                async with session.post(url, data=orjson.dumps(CHAT), headers=headers) as r:
                    await r.read()
            owners = _owners()  # every connection is open by now (pools warmed)
            redis_ports = {p for p, role in owners.items() if role == "redis"}
            watched = " or ".join(f"port {p}" for p in sorted(ports | redis_ports))
            pushed = f"(tcp[tcpflags] & tcp-push) != 0 and ({watched})"  # data, not bare ACKs
            # tcpdump writes to a file, read at the end: a pipe would fill, and the kernel drop packets
            with tempfile.TemporaryFile("w+") as out:
                dump = subprocess.Popen(
                    ["tcpdump", "-i", "lo", "-n", "-tt", "-l", "-q", "-B", "16384", pushed],
                    stdout=out,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                await asyncio.sleep(1)  # tcpdump attached
                for i in range(n):
                    body = orjson.dumps(
                        {**CHAT, "messages": [{"role": "user", "content": f"Say hello {i}."}]}
                    )
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        assert r.status == 200, await r.text()
                await asyncio.sleep(0.5)
                dump.terminate()
                _, report = dump.communicate(timeout=10)
                out.seek(0)
                capture = out.read()
            if " 0 packets dropped by kernel" not in report:
                print(report.strip().splitlines()[-1])
    return timeline(capture, owners, skip=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="requests, one at a time")
    args = parser.parse_args()
    if shutil.which("tcpdump") is None:
        raise SystemExit("hops.py needs tcpdump (apt-get install tcpdump)")
    result = uvloop.run(run(args.n))
    print(f"{result['with_this_shape']} of {result['requests']} requests had this sequence of messages:")
    print(f"{'#':>2} {'from':>8} → {'to':8} {'bytes':>6} {'gap µs':>8} {'at µs':>8}")
    for i, m in enumerate(result["messages"]):
        gap, at = m["gap_us_p50"], m["at_us_p50"]
        print(f"{i:2d} {m['from']:>8} → {m['to']:8} {m['bytes']:6d} {gap:8.0f} {at:8.0f}")
    result.update(date=datetime.now(UTC).isoformat(timespec="seconds"), n=args.n, cpus=os.cpu_count())
    write_json("hops", result)


if __name__ == "__main__":
    main()
