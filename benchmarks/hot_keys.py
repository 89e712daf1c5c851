"""Hard misses that waited on the loader, with and without early refresh (issue 14's figure).

    python benchmarks/hot_keys.py [--processes 4] [--seconds 8] [--keys 200] [--redis URL]

Each of `--processes` worker processes reads zipf-distributed keys (s = 1.1) through
get_or_load for `--seconds`, with a 1 s TTL and a loader that takes 50 ms (the source of
truth), pausing 1 ms between reads. A read "waited" when it took 25 ms or more: it called the
loader, or waited for another's load to land (a normal read takes well under 2 ms). Printed
per setting: reads, reads that waited (and their share; also among the reads of the 10
hottest keys, which early refresh is for: a key read less often than once per TTL expires
whatever is done), loader calls in the fleet, early refreshes, stale values served.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time

from tiercache import TieredCache
from tiercache.testing import redis_url

SETTINGS = {
    "no refresh": {},
    "early_refresh": {"early_refresh": True},
    "early_refresh + stale_while_revalidate=5": {"early_refresh": True, "stale_while_revalidate": 5},
}
LOADER_SECONDS = 0.05
TTL = 1.0
HOT = 10  # the hottest keys, whose reads are counted apart


def _worker(url: str, name: str, options: dict, keys: int, seconds: float, seed: int, out) -> None:
    rng = random.Random(seed)
    weights = [1.0 / (rank**1.1) for rank in range(1, keys + 1)]
    population = [f"item:{rank}" for rank in range(keys)]

    def load(key):
        time.sleep(LOADER_SECONDS)
        return {"key": key, "at": time.time()}

    with TieredCache.from_url(url, name=name, **options) as cache:
        cache.wait_ready(10)
        reads = waited = hot_reads = hot_waited = 0
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            rank = rng.choices(range(keys), weights)[0]
            started = time.perf_counter()
            cache.get_or_load(population[rank], load, ttl=TTL)
            slow = time.perf_counter() - started >= LOADER_SECONDS / 2
            reads, waited = reads + 1, waited + slow
            if rank < HOT:
                hot_reads, hot_waited = hot_reads + 1, hot_waited + slow
            time.sleep(0.001)
        stats = cache.stats()
        out.put(
            (
                reads,
                waited,
                stats["loads"],
                stats["early_refreshes"],
                stats["stale_served_revalidating"],
                hot_reads,
                hot_waited,
            )
        )


def run(url: str, label: str, options: dict, processes: int, seconds: float, keys: int) -> dict[str, int]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    name = f"hot{time.time_ns()}"
    workers = [
        context.Process(target=_worker, args=(url, name, options, keys, seconds, seed, out))
        for seed in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=seconds + 60) for _ in workers]
    for worker in workers:
        worker.join(30)
    reads = sum(r[0] for r in results)
    waited = sum(r[1] for r in results)
    loads = sum(r[2] for r in results)
    early = sum(r[3] for r in results)
    stale = sum(r[4] for r in results)
    hot_reads, hot_waited = sum(r[5] for r in results), sum(r[6] for r in results)
    print(
        f"  {label:42s} reads {reads:7,}  waited {waited:5,} ({100.0 * waited / reads:5.2f}%)  "
        f"of the {HOT} hottest keys' {hot_reads:,}: {hot_waited:,} ({100.0 * hot_waited / max(1, hot_reads):5.2f}%)  "
        f"loader calls {loads:5,}  early refreshes {early:5,}  stale served {stale:5,}"
    )
    return {"reads": reads, "waited": waited, "loads": loads, "early": early, "stale": stale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--redis", help="a Redis to use; default: one started here")
    args = parser.parse_args()
    print(
        f"{args.processes} processes, {args.keys} zipf keys, TTL {TTL} s, loader {LOADER_SECONDS * 1000:.0f} ms, "
        f"{args.seconds} s each"
    )
    with redis_url(args.redis) as url:
        for label, options in SETTINGS.items():
            run(url, label, options, args.processes, args.seconds, args.keys)


if __name__ == "__main__":
    main()
