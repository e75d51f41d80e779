"""A Redis Sentinel set on loopback for the failover tests: one primary, replicas, and sentinels run as
``redis-server <conf> --sentinel`` (Debian's ``redis-sentinel`` package is the same binary under
another name, and is often not installed).

Failure detection is scaled down (``down_after_ms`` 1,000 by default, Sentinel's own default is
30,000) so that a failover takes seconds.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from llm_router.testing.redis_server import RedisServer, RedisServerMissing, free_port
from llm_router.testing.worker_procs import terminate

MASTER = "mymaster"


class SentinelSet:
    """Start with ``start()`` (or ``with``); ``kill_primary()`` SIGKILLs whichever node is primary."""

    def __init__(
        self,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        appendonly: bool = True,
        password: str | None = None,
    ) -> None:
        self.replica_count = replicas
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.appendonly = appendonly
        self.password = password  # required by the nodes and the sentinels alike (as Bitnami's chart does)
        self.nodes: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="llm-router-sentinel-")
        self.dir = Path(self._tmp.name)

    # -- addresses ----------------------------------------------------------------------------------

    @property
    def sentinels(self) -> str:
        """``LLM_ROUTER_REDIS_SENTINELS``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    @property
    def url(self) -> str:
        """The same set as one ``REDIS_URL``."""
        return f"redis+sentinel://{self.sentinels}/{MASTER}/0"

    def env(self) -> dict[str, str]:
        """Environment naming this set (``REDIS_URL`` must be absent beside it)."""
        env = {"LLM_ROUTER_REDIS_SENTINELS": self.sentinels, "LLM_ROUTER_REDIS_SENTINEL_MASTER": MASTER}
        if self.password:
            env.update(
                LLM_ROUTER_REDIS_PASSWORD=self.password, LLM_ROUTER_REDIS_SENTINEL_PASSWORD=self.password
            )
        return env

    def primary_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(
                    port=port, password=self.password, socket_timeout=1, socket_connect_timeout=1
                ) as s:
                    addr = s.sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if addr:
                return int(addr[1])
        return None

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    # -- life ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelSet:
        if not self.dir.exists():
            raise RuntimeError("a SentinelSet starts once")
        try:
            primary = self._node()
            self.nodes.append(primary.start())
            for _ in range(self.replica_count):
                replica = self._node("--replicaof", "127.0.0.1", str(primary.port))
                self.nodes.append(replica.start())
            deadline = time.monotonic() + timeout
            self._until(deadline, self._replicas_synced, "replicas in sync")
            self.sentinel_ports = [free_port() for _ in range(self.sentinel_count)]
            for i in range(self.sentinel_count):
                self._start_sentinel(i, primary.port)
            self._until(deadline, self._sentinels_agree, "sentinels that see each other and the replicas")
        except BaseException:
            self.stop()
            raise
        return self

    def kill_primary(self) -> RedisServer:
        """SIGKILL the node the sentinels call primary now; returns it (``start()`` brings it back, as
        a replica of whoever is primary by then)."""
        port = self.primary_port()
        if port is None:
            raise RuntimeError("no sentinel names a primary")
        node = self.node(port)
        node.kill()
        return node

    def demote_primary(self) -> int:
        """A failover the sentinels run while the primary is alive (``SENTINEL FAILOVER``): the old
        primary becomes a replica, and clients still connected to it get ``READONLY``. Returns its port."""
        port = self.primary_port()
        if port is None:
            raise RuntimeError("no sentinel names a primary")
        with redis.Redis(port=self.sentinel_ports[0], password=self.password, socket_timeout=5) as s:
            s.execute_command("SENTINEL", "FAILOVER", MASTER)
        return port

    def wait_for_new_primary(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a primary other than ``old_port`` that takes writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port()
            if port is not None and port != old_port and self._is_writable(port):
                return port
            time.sleep(0.02)
        raise RuntimeError(f"no failover away from port {old_port} within {timeout} s")

    def stop(self) -> None:
        for proc in self._sentinels:
            terminate(proc)
        self._sentinels = []
        for node in self.nodes:
            node.stop()
        self.nodes = []
        self._tmp.cleanup()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- insides ------------------------------------------------------------------------------------

    def _node(self, *args: str) -> RedisServer:
        data = self.dir / f"node-{len(self.nodes)}"
        data.mkdir()
        # a replica's first sync starts at once, not after Redis' 5 s wait for more replicas
        args = ("--repl-diskless-sync-delay", "0", *args)
        if self.password:
            args = (*args, "--requirepass", self.password, "--masterauth", self.password)
        return RedisServer(appendonly=self.appendonly, data_dir=data, extra_args=args)

    def _start_sentinel(self, i: int, primary_port: int) -> None:
        port = self.sentinel_ports[i]
        # each sentinel is told the others and the replicas, which it would otherwise learn from
        # hello messages and INFO within seconds
        known = "".join(
            f"sentinel known-sentinel {MASTER} 127.0.0.1 {p} {_sentinel_id(j)}\n"
            for j, p in enumerate(self.sentinel_ports)
            if j != i
        ) + "".join(f"sentinel known-replica {MASTER} 127.0.0.1 {n.port}\n" for n in self.nodes[1:])
        conf = self.dir / f"sentinel-{i}.conf"  # Sentinel rewrites its config file: one each
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            "daemonize no\n"
            f'dir "{self.dir}"\n'
            f'logfile "{self.dir}/sentinel-{i}.log"\n'
            f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {self.sentinel_count // 2 + 1}\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            f"sentinel myid {_sentinel_id(i)}\n" + known + self._auth_lines()
        )
        binary = self.nodes[0].binary
        if binary is None:
            raise RedisServerMissing()
        proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
        self._sentinels.append(proc)

    def _auth_lines(self) -> str:
        if not self.password:
            return ""
        return (
            f"requirepass {self.password}\n"  # clients of the sentinels
            f"sentinel sentinel-pass {self.password}\n"  # the sentinels among themselves
            f"sentinel auth-pass {MASTER} {self.password}\n"  # the sentinels to the nodes
        )

    def _replicas_synced(self) -> bool:
        for node in self.nodes[1:]:
            with redis.Redis(port=node.port, password=self.password, socket_timeout=1) as r:
                if r.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(
                    port=port, password=self.password, socket_timeout=1, socket_connect_timeout=1
                ) as s:
                    state = s.sentinel_master(MASTER)
            except redis.RedisError:
                return False
            if int(state["num-other-sentinels"]) < self.sentinel_count - 1:
                return False
            if int(state["num-slaves"]) < self.replica_count:
                return False
        return True

    def _is_writable(self, port: int) -> bool:
        try:
            with redis.Redis(
                port=port, password=self.password, socket_timeout=1, socket_connect_timeout=1
            ) as r:
                return r.info("replication").get("role") == "master"
        except redis.RedisError:
            return False

    def _until(self, deadline: float, check: object, what: str) -> None:
        while not check():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise RuntimeError(f"Sentinel set: no {what} in time (logs in {self.dir})")
            for proc in self._sentinels:
                if proc.poll() is not None:
                    raise RuntimeError(f"a sentinel exited with {proc.returncode} (logs in {self.dir})")
            time.sleep(0.05)


def _sentinel_id(i: int) -> str:
    return f"{i + 1:040x}"
