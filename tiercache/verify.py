"""Consistency checker: ``python -m tiercache verify``.

N processes share one Redis through TieredCache for a while. Each key has one writer
process, which writes increasing versions; every process reads random keys. Meanwhile the
checker injects one kind of fault (``--faults``, or ``all`` for each kind in turn):

  connections    kill the subscribers' connections (CLIENT KILL TYPE pubsub) and, on a
                 Redis it started itself, pause the server (SIGSTOP) for 300 ms
  maxmemory      make Redis refuse writes (maxmemory below its use, noeviction) for 300 ms
  cancel         the workers are asyncio caches, and a third of their writes are cancelled
                 on the wire (asyncio.wait_for with a timeout shorter than the round trip)
  fork           each worker forks once mid-run; the child keeps reading through the cache
                 it inherited (its reads are checked like any other)
  write-through  the workers write through a shared source of truth (writer=) and read
                 through it (get_or_load), while the server is paused past the client
                 timeout, so writes the source took but Redis missed must be repaired

The caches run with the shipped bus timings (heartbeat 1 s, silence 3 s) unless
``--fast-bus``, and ``--invalidation tracking`` runs them in tracking mode.

Afterwards it matches every read against the writes. A read that began `age` seconds after
a newer version had been written (the write had returned) is stale by `age`. A write is
visible everywhere within X if no read that began more than X after it returned an older
version. It reports that share ("nines") for 10 ms, 100 ms, 250 ms and the L1 TTL, the
reads stale past the L1 TTL (the bound the design promises: there must be none), and the
fills the fill guard dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Hashable, Iterable
from typing import Any

import redis

from . import clients
from .aio import AsyncTieredCache
from .cache import TieredCache
from .testing import RedisServer

BOUNDS = (0.010, 0.100, 0.250)
FAULT_KINDS = ("connections", "maxmemory", "cancel", "fork", "write-through")
FAST_BUS = {"heartbeat": 0.05, "max_silence": 0.2, "gap_grace": 0.05}


class _Settings:
    """What every worker of one run is told (picklable, for spawned processes)."""

    def __init__(
        self,
        url: str,
        name: str,
        processes: int,
        keys: list[str],
        start_at: float,
        duration: float,
        l1_ttl: float,
        write_share: float,
        kind: str,
        options: dict[str, Any],
        database: Any,
    ) -> None:
        self.url, self.name, self.processes, self.keys = url, name, processes, keys
        self.start_at, self.duration, self.l1_ttl, self.write_share = start_at, duration, l1_ttl, write_share
        self.kind, self.options, self.database = kind, options, database


def _worker(settings: _Settings, index: int, results: Any) -> None:
    if settings.kind == "cancel":
        asyncio.run(_async_worker(settings, index, results))
        return
    rnd = random.Random(index)
    own = settings.keys[index :: settings.processes]
    versions = dict.fromkeys(own, 0)
    writes: list[tuple[str, int, float]] = []
    reads: list[tuple[str, int, float]] = []
    database = settings.database
    options = dict(settings.options)
    if database is not None:
        options["writer"] = database.__setitem__
    child: int | None = None  # fork: the child's pid in the parent, 0 in the child
    with TieredCache.from_url(
        settings.url, name=settings.name, l1_ttl=settings.l1_ttl, default_ttl=None, **options
    ) as cache:
        cache.wait_ready(10)
        while time.monotonic() < settings.start_at:
            time.sleep(0.001)
        fork_at = settings.start_at + settings.duration * rnd.uniform(0.2, 0.5)
        while time.monotonic() < settings.start_at + settings.duration:
            if settings.kind == "fork" and child is None and time.monotonic() >= fork_at:
                child = os.fork()
                if child == 0:  # the child reads through the cache it inherited, then reports
                    reads.clear()
                    writes.clear()
                    own = []
            if own and rnd.random() < settings.write_share:
                key = rnd.choice(own)
                versions[key] += 1
                if cache.set(key, {"v": versions[key]}) or database is not None:
                    writes.append((key, versions[key], time.monotonic()))  # the source of truth took it
            else:
                key = rnd.choice(settings.keys)
                began = time.monotonic()
                if database is not None:
                    value = cache.get_or_load(key, database.get)
                else:
                    value = cache.get(key)
                reads.append((key, value["v"] if value else 0, began))
        stats = cache.stats()
    results.put((writes, reads, stats))
    if child == 0:
        results.close()
        results.join_thread()  # the report is out before the child ends
        os._exit(0)  # the forked child: nothing of the parent's to clean up
    if child is not None:
        os.waitpid(child, 0)


async def _async_worker(settings: _Settings, index: int, results: Any) -> None:
    rnd = random.Random(index)
    own = settings.keys[index :: settings.processes]
    versions = dict.fromkeys(own, 0)
    writes: list[tuple[str, int, float]] = []
    reads: list[tuple[str, int, float]] = []
    async with AsyncTieredCache.from_url(
        settings.url, name=settings.name, l1_ttl=settings.l1_ttl, default_ttl=None, **settings.options
    ) as cache:
        await cache.wait_ready(10)
        while time.monotonic() < settings.start_at:
            await asyncio.sleep(0.001)
        while time.monotonic() < settings.start_at + settings.duration:
            if own and rnd.random() < settings.write_share:
                key = rnd.choice(own)
                versions[key] += 1
                if rnd.random() < 1 / 3:
                    try:  # cancelled on the wire: its outcome is unknown, so it is not a write we count
                        await asyncio.wait_for(cache.set(key, {"v": versions[key]}), 0.0002)
                    except asyncio.TimeoutError:
                        continue
                    writes.append((key, versions[key], time.monotonic()))
                elif await cache.set(key, {"v": versions[key]}):
                    writes.append((key, versions[key], time.monotonic()))
            else:
                key = rnd.choice(settings.keys)
                began = time.monotonic()
                value = await cache.get(key)
                reads.append((key, value["v"] if value else 0, began))
        stats = cache.stats()
    results.put((writes, reads, stats))


def _inject_faults(
    client: Any, server: RedisServer | None, start_at: float, duration: float, every: float, kind: str
) -> list[str]:
    done = []
    next_fault = start_at + every
    step = 0
    while time.monotonic() < start_at + duration:
        if time.monotonic() >= next_fault:
            try:
                done.append(_one_fault(client, server, kind, step))
            except redis.RedisError:
                pass
            step += 1
            next_fault += every
        time.sleep(0.01)
    return done


def _one_fault(client: Any, server: RedisServer | None, kind: str, step: int) -> str:
    every = {"target_nodes": "all"} if clients.is_cluster(client) else {}  # on a cluster: each node
    if kind == "maxmemory":
        client.config_set("maxmemory-policy", "noeviction", **every)
        client.config_set("maxmemory", 1, **every)
        time.sleep(0.3)
        client.config_set("maxmemory", 0, **every)
        return "maxmemory 300 ms"
    if kind == "write-through" and server is not None and step % 2 == 1:
        server.pause()
        time.sleep(0.8)  # past the clients' 0.5 s timeout: writes fail after the source took them
        server.resume()
        return "SIGSTOP 800 ms"
    if kind == "connections" and server is not None and step % 3 == 2:
        server.pause()
        time.sleep(0.3)
        server.resume()
        return "SIGSTOP 300 ms"
    client.client_kill_filter(_type="pubsub", **every)
    return "CLIENT KILL TYPE pubsub"


def analyse(
    writes: Iterable[tuple[Hashable, int, float]], reads: Iterable[tuple[Hashable, int, float]], l1_ttl: float
) -> dict[str, Any]:
    """The report from every write (key, version, time done) and read (key, version, time
    begun, on time.monotonic, which every process on the host shares); version 0 is a miss."""
    writes = list(writes)
    by_key: dict[Hashable, list[tuple[int, float]]] = {}
    for key, version, done in writes:
        by_key.setdefault(key, []).append((version, done))
    for history in by_key.values():
        history.sort()
    lag: dict[tuple[Hashable, int], float] = {(key, version): 0.0 for key, version, _ in writes}
    stale_reads = stale_past_bound = read_count = 0
    for key, seen, began in reads:
        read_count += 1
        history = by_key.get(key, [])
        # writes newer than what was seen, done before the read began
        start = bisect.bisect_right(history, (seen, float("inf")))
        for version, done in history[start:]:
            if done >= began:
                continue
            age = began - done
            lag[(key, version)] = max(lag[(key, version)], age)
        newer_done = [done for version, done in history[start:] if done < began]
        if newer_done:
            stale_reads += 1
            if began - min(newer_done) > l1_ttl:
                stale_past_bound += 1
    total = len(lag) or 1
    shares = {bound: sum(1 for value in lag.values() if value <= bound) / total for bound in (*BOUNDS, l1_ttl)}
    return {
        "writes": len(writes),
        "reads": read_count,
        "stale_reads": stale_reads,
        "stale_past_bound": stale_past_bound,
        "visible_within": shares,
    }


def run(
    url: str | None = None,
    processes: int = 4,
    keys: int = 50,
    duration: float = 10.0,
    l1_ttl: float = 2.0,
    write_share: float = 0.05,
    fault_every: float = 1.0,
    kind: str = "connections",
    invalidation: str = "pubsub",
    fast_bus: bool = False,
) -> dict[str, Any]:
    """Run the check with one kind of fault and return its report (see the module docstring)."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
    server = None
    if url is None:
        server = RedisServer().start()
        url = server.url
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager() if kind == "write-through" else None
    options: dict[str, Any] = {"invalidation": invalidation, **(FAST_BUS if fast_bus else {})}
    settings = _Settings(
        url,
        f"verify{random.randrange(1 << 30)}",
        processes,
        [f"key:{i}" for i in range(keys)],
        time.monotonic() + 3.0,  # room for the workers to start and subscribe
        duration,
        l1_ttl,
        write_share,
        kind,
        options,
        None if manager is None else manager.dict(),
    )
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(settings, i, results), daemon=True) for i in range(processes)]
    kind_of_url = clients.kind_of_url(url)
    if kind_of_url == "cluster":
        client: Any = clients.cluster_client(url, {})
    elif kind_of_url == "sentinel":
        client = clients.sentinel_client(url, {})
    else:
        client = redis.Redis.from_url(url)
    expected = processes * (2 if kind == "fork" else 1)  # a forked child reports too
    try:
        for worker in workers:
            worker.start()
        faults = _inject_faults(client, server, settings.start_at, duration, fault_every, kind)
        collected = [results.get(timeout=duration + 60) for _ in range(expected)]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        client.close()
        if manager is not None:
            manager.shutdown()
        if server is not None:
            server.stop()
    writes = [w for ws, _, _ in collected for w in ws]
    reads = [r for _, rs, _ in collected for r in rs]
    report = analyse(writes, reads, l1_ttl)
    report["fills_dropped"] = sum(stats["fills_dropped"] for *_, stats in collected)
    report["repairs"] = sum(stats["repairs_done"] for *_, stats in collected)
    report["faults"] = faults
    report["l1_flushes"] = [stats["l1_flushes"] for *_, stats in collected]
    report["l1_ttl"] = l1_ttl
    report["kind"] = kind
    return report


def print_report(report: dict[str, Any]) -> None:
    print(
        f"faults: {report['kind']}  writes {report['writes']:,}  reads {report['reads']:,}  "
        f"faults injected {len(report['faults'])}"
    )
    for bound, share in report["visible_within"].items():
        label = f"{bound * 1000:.0f} ms" if bound != report["l1_ttl"] else f"L1 TTL ({bound:g} s)"
        print(f"  writes visible in every L1 within {label:>14s}: {share:.6%}")
    print(f"  stale reads (any age): {report['stale_reads']:,}")
    print(f"  stale reads past the L1 TTL: {report['stale_past_bound']}")
    print(f"  fills dropped by the fill guard: {report['fills_dropped']:,}")
    print(f"  repairs of writes Redis missed: {report['repairs']:,}")
    print(f"  L1 flushes by the subscribers: {report['l1_flushes']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tiercache verify", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return command(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server, which can also be paused)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--l1-ttl", type=float, default=2.0)
    parser.add_argument("--fault-every", type=float, default=1.0)
    parser.add_argument(
        "--faults",
        default="connections",
        choices=(*FAULT_KINDS, "all"),
        help="the kind of fault to inject; all: each kind in turn, a run each",
    )
    parser.add_argument("--invalidation", default="pubsub", choices=("pubsub", "tracking"))
    parser.add_argument(
        "--fast-bus", action="store_true", help="heartbeat 50 ms, silence 200 ms (default: the shipped 1 s and 3 s)"
    )


def command(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kinds = FAULT_KINDS if args.faults == "all" else (args.faults,)
    failed = False
    for kind in kinds:
        report = run(
            args.redis,
            args.processes,
            args.keys,
            args.seconds,
            args.l1_ttl,
            fault_every=args.fault_every,
            kind=kind,
            invalidation=args.invalidation,
            fast_bus=args.fast_bus,
        )
        print_report(report)
        failed = failed or report["stale_past_bound"] > 0
    return 1 if failed else 0
