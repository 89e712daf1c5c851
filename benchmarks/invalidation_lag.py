"""Invalidation lag between two processes on loopback: p50 / p99 (target p99 <= 5 ms).

    python benchmarks/invalidation_lag.py [--rounds 500] [--redis URL] [--json FILE]

A child process holds a key in its L1 and watches it (checking every 100 us, sleeping in
between so its subscriber thread gets the GIL). The parent writes the key through its own
TieredCache. Lag = when the child's L1 let go of the old value - when the parent's set()
returned (both on the machine-wide monotonic clock; below zero counts as zero, since the
message leaves in the same round trip as the write). The lag from when set() was called
(so including the write's own round trip) is printed too, and what the child's
tiercache_invalidation_lag_seconds histogram recorded (stamped when the message was made,
just before the write went out, so it sits between the two).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

from tiercache import TieredCache
from tiercache.local import EXTENSION
from tiercache.testing import redis_url


def _watcher(url, name, rounds, conn):
    with TieredCache.from_url(url, name=name) as cache:
        cache.wait_ready(10)
        for _ in range(rounds):
            while cache.l1.peek("k") is None:  # wait until the current value is held
                cache.get("k")
                time.sleep(0.001)
            conn.send("holding")
            while cache.l1.peek("k") is not None:
                time.sleep(0.0001)
            conn.send(time.monotonic())
        conn.send(cache.stats()["invalidation_lag"])


def measure(url: str, rounds: int) -> tuple[list[float], list[float], dict]:
    """Lags in seconds, one per round: from set() returning, and from set() being called;
    and the child's invalidation-lag histogram (as in its stats())."""
    name = f"lag{time.monotonic_ns()}"
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    with TieredCache.from_url(url, name=name) as cache:
        cache.wait_ready(10)
        cache.set("k", 0)
        child = ctx.Process(target=_watcher, args=(url, name, rounds, child_end), daemon=True)
        child.start()
        lags, from_call = [], []
        try:
            for version in range(1, rounds + 1):
                assert parent_end.recv() == "holding"
                time.sleep(0.002)
                called = time.monotonic()
                cache.set("k", {"v": version})
                written = time.monotonic()
                dropped = parent_end.recv()
                lags.append(max(0.0, dropped - written))
                from_call.append(dropped - called)
            histogram = parent_end.recv()
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
    return lags, from_call, histogram


def summary(lags: list[float]) -> dict[str, float]:
    """p50, p99 and max, in ms."""
    ms = sorted(lag * 1000 for lag in lags)
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))], "max": ms[-1]}


def percentiles(lags: list[float]) -> str:
    figures = summary(lags)
    return f"p50 {figures['p50']:.2f} ms, p99 {figures['p99']:.2f} ms, max {figures['max']:.2f} ms"


def histogram_p99(histogram: dict) -> float:
    """The upper bound of the bucket that holds the 99th percentile (seconds)."""
    for bound, cumulative in histogram["buckets"].items():
        if cumulative >= 0.99 * histogram["count"]:
            return bound
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--json", help="also write the figures (ms) here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        lags, from_call, histogram = measure(url, args.rounds)
    if args.json:
        figures = {
            "from_returned": summary(lags),
            "from_called": summary(from_call),
            "metric_p99_bucket": histogram_p99(histogram) * 1000,
            "writes": len(lags),
        }
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "invalidation_lag", "extension": EXTENSION, "args": vars(args), "results": figures},
                handle,
                indent=1,
            )
    print(f"invalidation lag over {len(lags)} writes (target p99 <= 5 ms)")
    print(f"  from set() returning: {percentiles(lags)}")
    print(f"  from set() called:    {percentiles(from_call)}")
    mean = histogram["sum"] / histogram["count"] * 1000 if histogram["count"] else float("nan")
    print(
        f"  the reader's metric:  {histogram['count']} observed, mean {mean:.2f} ms, "
        f"p99 in the bucket le={histogram_p99(histogram) * 1000:g} ms"
    )


if __name__ == "__main__":
    main()
