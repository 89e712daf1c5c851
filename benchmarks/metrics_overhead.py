"""What registering a cache's Prometheus collector adds to an L1 hit, measured round-robin.

    python benchmarks/metrics_overhead.py [--rounds 300] [--redis URL] [--json FILE]

The pytest-benchmark group metrics-l1-hit runs its two cases one after the other, so a
change of load between them shows up as a difference. Here each round times the same loop
of TieredCache.get L1 hits twice, once without and once with the collector registered (in
alternating order), and the ratio of the medians is reported (target <= 1.05x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from prometheus_client import CollectorRegistry

from tiercache import TieredCache
from tiercache.local import EXTENSION
from tiercache.metrics import CacheCollector
from tiercache.testing import redis_url

KEYS = [f"key:{i}" for i in range(10_000)]


def run(url: str, rounds: int) -> dict[str, float]:
    with TieredCache.from_url(url, name="metrics-overhead", l1_maxsize=len(KEYS)) as cache:
        cache.wait_ready()
        cache.set_many(dict.fromkeys(KEYS, 1))
        get = cache.get

        def hits() -> float:
            began = time.process_time()
            for key in KEYS:
                get(key)
            return time.process_time() - began

        times: dict[str, list[float]] = {"without": [], "registered": []}
        for round_number in range(rounds):
            order = ("without", "registered") if round_number % 2 else ("registered", "without")
            for case in order:
                collector = CacheCollector(cache, registry=CollectorRegistry()) if case == "registered" else None
                times[case].append(hits())
                if collector is not None:
                    collector.unregister()
        assert cache.stats()["l1_hits"] >= 2 * rounds * len(KEYS)
    return {case: statistics.median(values) / len(KEYS) for case, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--json", help="also write the medians (s per get) here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        per_get = run(url, args.rounds)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "metrics_overhead", "extension": EXTENSION, "args": vars(args), "results": per_get},
                handle,
                indent=1,
            )
    for case, seconds in per_get.items():
        print(f"  TieredCache.get L1 hit, collector {case:10s} {seconds * 1e9:6.1f} ns (median of {args.rounds})")
    print(f"metrics registered  {per_get['registered'] / per_get['without']:.3f}x  (target <= 1.05x)")


if __name__ == "__main__":
    main()
