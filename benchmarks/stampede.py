"""Stampede on one cold key: loader calls in the whole fleet (target: 1, the lease).

    python benchmarks/stampede.py [--processes 8] [--threads 50] [--repeats 5]
                                  [--loader-seconds 0.3] [--redis URL] [--json FILE]

`--processes` spawned processes, each with its own TieredCache and `--threads` threads, call
get_or_load on the same key, cold in every L1 and in Redis, at the same moment (processes
meet at a barrier, then release their threads through another). The loader sleeps
`--loader-seconds` (the source of truth is slow) and counts its calls in Redis (INCR), so
every process's calls are counted. Each repeat uses a new key. Printed per repeat: loader
calls in the fleet, callers that got the value, lease waits that timed out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time

import redis

from tiercache import TieredCache
from tiercache.local import EXTENSION
from tiercache.testing import redis_url


def _worker(url, name, threads, repeats, loader_seconds, barrier, out) -> None:
    """One process of the fleet: for each repeat, threads get_or_load the repeat's key at once."""
    counter = redis.Redis.from_url(url)
    with TieredCache.from_url(url, name=name) as cache:
        cache.wait_ready(10)
        for repeat in range(repeats):

            def loader(key):
                counter.incr(f"{name}:loader-calls:{repeat}")
                time.sleep(loader_seconds)
                return "value"

            values: list[object] = []
            go = threading.Barrier(threads + 1)

            def call() -> None:
                go.wait(30)
                values.append(cache.get_or_load(f"cold:{repeat}", loader))

            workers = [threading.Thread(target=call) for _ in range(threads)]
            for worker in workers:
                worker.start()
            timeouts = cache.stats()["lease_timeouts"]
            barrier.wait(60)  # every process ready: all go at once
            go.wait(30)
            for worker in workers:
                worker.join(60)
            out.put((repeat, values.count("value"), cache.stats()["lease_timeouts"] - timeouts))
    counter.close()


def run(url: str, processes: int, threads: int, repeats: int, loader_seconds: float) -> list[dict[str, int]]:
    """Per repeat: {"loader_calls", "callers", "got_value", "lease_timeouts"} over the fleet."""
    name = f"stampede{time.monotonic_ns()}"
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    fleet = [
        ctx.Process(target=_worker, args=(url, name, threads, repeats, loader_seconds, barrier, out), daemon=True)
        for _ in range(processes)
    ]
    for process in fleet:
        process.start()
    try:
        reports = [out.get(timeout=120) for _ in range(processes * repeats)]
    finally:
        for process in fleet:
            process.join(30)
            if process.is_alive():
                process.kill()
    client = redis.Redis.from_url(url)
    results = []
    for repeat in range(repeats):
        mine = [report for report in reports if report[0] == repeat]
        results.append(
            {
                "loader_calls": int(client.get(f"{name}:loader-calls:{repeat}") or 0),
                "callers": processes * threads,
                "got_value": sum(report[1] for report in mine),
                "lease_timeouts": sum(report[2] for report in mine),
            }
        )
    client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loader-seconds", type=float, default=0.3)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--json", help="also write the counts here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        results = run(url, args.processes, args.threads, args.repeats, args.loader_seconds)
    print(f"{args.processes} processes x {args.threads} threads, get_or_load of one cold key (target: 1 loader call)")
    for repeat, figures in enumerate(results, 1):
        print(
            f"  repeat {repeat}: {figures['loader_calls']} loader call(s), "
            f"{figures['got_value']}/{figures['callers']} callers got the value, "
            f"{figures['lease_timeouts']} lease wait(s) timed out"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "stampede", "extension": EXTENSION, "args": vars(args), "results": results}, handle, indent=1
            )


if __name__ == "__main__":
    main()
