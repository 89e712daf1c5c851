"""Consistency checker: ``python -m tiercache verify``.

N processes share one Redis through TieredCache for a while. Each key has one writer
process, which writes increasing versions; every process reads random keys. Meanwhile the
checker injects faults: it kills the subscribers' connections (CLIENT KILL TYPE pubsub)
and, on a Redis it started itself, pauses the server (SIGSTOP) past the heartbeat bound.

Afterwards it matches every read against the writes. A read that began `age` seconds after
a newer version had been written (the write had returned) is stale by `age`. A write is
visible everywhere within X if no read that began more than X after it returned an older
version. It reports that share ("nines") for 10 ms, 100 ms, 250 ms and the L1 TTL, the
reads stale past the L1 TTL (the bound the design promises: there must be none), and the
fills the fill guard dropped.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import random
import signal
import time
from typing import Any

import redis

from .cache import TieredCache
from .testing import RedisServer

BOUNDS = (0.010, 0.100, 0.250)


def _worker(url: str, name: str, index: int, processes: int, keys: list[str], start_at: float,
            duration: float, l1_ttl: float, write_share: float, results: Any) -> None:
    rnd = random.Random(index)
    own = keys[index::processes]
    versions = dict.fromkeys(own, 0)
    writes: list[tuple[str, int, float]] = []
    reads: list[tuple[str, int, float]] = []
    with TieredCache.from_url(url, name=name, l1_ttl=l1_ttl, default_ttl=None,
                              heartbeat=0.05, max_silence=0.2, gap_grace=0.05) as cache:
        cache.wait_ready(10)
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while time.monotonic() < start_at + duration:
            if own and rnd.random() < write_share:
                key = rnd.choice(own)
                versions[key] += 1
                if cache.set(key, {"v": versions[key]}):
                    writes.append((key, versions[key], time.monotonic()))
            else:
                key = rnd.choice(keys)
                began = time.monotonic()
                value = cache.get(key)
                reads.append((key, value["v"] if value else 0, began))
        stats = cache.stats()
    results.put((index, writes, reads, stats["fills_dropped"], stats["l1_flushes"]))


def _inject_faults(client: redis.Redis, server: RedisServer | None, start_at: float, duration: float,
                   every: float) -> list[str]:
    done = []
    next_fault = start_at + every
    step = 0
    while time.monotonic() < start_at + duration:
        if time.monotonic() >= next_fault:
            if server is not None and step % 3 == 2:
                server.pause()
                time.sleep(0.3)
                server.resume()
                done.append("SIGSTOP 300 ms")
            else:
                try:
                    client.client_kill_filter(_type="pubsub")
                    done.append("CLIENT KILL TYPE pubsub")
                except redis.RedisError:
                    pass
            step += 1
            next_fault += every
        time.sleep(0.01)
    return done


def analyse(writes: list[tuple[str, int, float]], reads: list[tuple[str, int, float]],
            l1_ttl: float) -> dict[str, Any]:
    """The report from every write (key, version, time done) and read (key, version, time
    begun); version 0 is a miss."""
    by_key: dict[str, list[tuple[int, float]]] = {}
    for key, version, done in writes:
        by_key.setdefault(key, []).append((version, done))
    for history in by_key.values():
        history.sort()
    lag: dict[tuple[str, int], float] = {(key, version): 0.0 for key, version, _ in writes}
    stale_reads = stale_past_bound = 0
    for key, seen, began in reads:
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
        "reads": len(reads),
        "stale_reads": stale_reads,
        "stale_past_bound": stale_past_bound,
        "visible_within": shares,
    }


def run(url: str | None = None, processes: int = 4, keys: int = 50, duration: float = 10.0,
        l1_ttl: float = 2.0, write_share: float = 0.05, fault_every: float = 1.0) -> dict[str, Any]:
    """Run the check and return its report (see the module docstring)."""
    server = None
    if url is None:
        server = RedisServer().start()
        url = server.url
    name = f"verify{random.randrange(1 << 30)}"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    key_names = [f"key:{i}" for i in range(keys)]
    start_at = time.monotonic() + 3.0  # room for the workers to start and subscribe
    workers = [
        ctx.Process(target=_worker, args=(url, name, i, processes, key_names, start_at, duration,
                                          l1_ttl, write_share, results), daemon=True)
        for i in range(processes)
    ]
    client = redis.Redis.from_url(url)
    try:
        for worker in workers:
            worker.start()
        faults = _inject_faults(client, server, start_at, duration, fault_every)
        collected = [results.get(timeout=duration + 60) for _ in workers]
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        client.close()
        if server is not None:
            server.stop()
    writes = [w for _, ws, _, _, _ in collected for w in ws]
    reads = [r for _, _, rs, _, _ in collected for r in rs]
    report = analyse(writes, reads, l1_ttl)
    report["fills_dropped"] = sum(dropped for _, _, _, dropped, _ in collected)
    report["faults"] = faults
    report["l1_flushes"] = [flushes for *_, flushes in collected]
    report["l1_ttl"] = l1_ttl
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"writes {report['writes']:,}  reads {report['reads']:,}  faults injected {len(report['faults'])}")
    for bound, share in report["visible_within"].items():
        label = f"{bound * 1000:.0f} ms" if bound != report["l1_ttl"] else f"L1 TTL ({bound:g} s)"
        print(f"  writes visible in every L1 within {label:>14s}: {share:.6%}")
    print(f"  stale reads (any age): {report['stale_reads']:,}")
    print(f"  stale reads past the L1 TTL: {report['stale_past_bound']}")
    print(f"  fills dropped by the fill guard: {report['fills_dropped']:,}")
    print(f"  L1 flushes by the subscribers: {report['l1_flushes']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiercache verify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def command(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    report = run(args.redis, args.processes, args.keys, args.seconds, args.l1_ttl, fault_every=args.fault_every)
    print_report(report)
    return 0 if report["stale_past_bound"] == 0 else 1
