"""Bulk invalidation on a large keyspace, against raw redis-py doing the same in Redis.

    python benchmarks/bulk.py [--keys 100000] [--rounds 3] [--redis URL]

Each round fills the keyspace afresh: `--keys` keys under "user:" that go and as many under
"order:" that stay (and, for tags, the same keys written with a tag), then times:

* delete_prefix("user:") vs the raw peer: SCAN MATCH + UNLINK in batches of 1,000;
* invalidate_tags(["t"]) vs the raw peer: UNLINK of the same keys, 500 a call, from a list
  the peer already holds (so the figure is the price of tag bookkeeping and messages);
* a tagged set vs an untagged set, per call (the MULTI with the tag script).

A second cache (another subscriber) holds a sample of the deleted keys in its L1: the time
until it has dropped them all is printed too. Medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from tiercache import TieredCache
from tiercache.testing import redis_url


def fill(client: redis.Redis, cache: TieredCache, count: int, tagged: bool) -> None:
    payload = {"id": 1, "name": "Ada"}
    for start in range(0, count, 1000):
        batch = {f"user:{i}": payload for i in range(start, min(start + 1000, count))}
        cache.set_many(batch, tags=["t"] if tagged else None)
        cache.set_many({f"order:{i}": payload for i in range(start, min(start + 1000, count))})


def until_dropped(reader: TieredCache, keys: list[str], started: float) -> float:
    while any(reader.l1.peek(key) is not None for key in keys):
        time.sleep(0.0005)
    return time.perf_counter() - started


def one_round(url: str, count: int) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    figures = {}
    with TieredCache.from_url(url, name="bulk") as cache, TieredCache.from_url(url, name="bulk") as reader:
        cache.wait_ready(10)
        reader.wait_ready(10)
        sample = [f"user:{i}" for i in range(0, count, max(1, count // 100))]

        client.flushdb()
        fill(client, cache, count, tagged=False)
        for key in sample:
            reader.get(key)
        started = time.perf_counter()
        assert cache.delete_prefix("user:") == count
        figures["delete_prefix"] = time.perf_counter() - started
        figures["delete_prefix: reader's L1 dropped"] = until_dropped(reader, sample, started)

        client.flushdb()
        fill(client, cache, count, tagged=False)
        started = time.perf_counter()
        prefix = cache.redis_key("user:")
        deleted, cursor = 0, 0
        while True:
            cursor, found = client.scan(cursor, match=prefix + b"*", count=1000)
            if found:
                deleted += client.unlink(*found)
            if not cursor:
                break
        assert deleted == count
        figures["raw SCAN + UNLINK"] = time.perf_counter() - started

        client.flushdb()
        fill(client, cache, count, tagged=True)
        for key in sample:
            reader.get(key)
        started = time.perf_counter()
        assert cache.invalidate_tags(["t"]) == count
        figures["invalidate_tags"] = time.perf_counter() - started
        figures["invalidate_tags: reader's L1 dropped"] = until_dropped(reader, sample, started)

        client.flushdb()
        fill(client, cache, count, tagged=False)
        rkeys = [cache.redis_key(f"user:{i}") for i in range(count)]
        started = time.perf_counter()
        for start in range(0, count, 500):
            client.unlink(*rkeys[start : start + 500])
        figures["raw UNLINK of a known list"] = time.perf_counter() - started

        client.flushdb()
        calls = 2000
        for label, tags in (("set, untagged (per call)", None), ("set, one tag (per call)", ["t"])):
            started = time.perf_counter()
            for i in range(calls):
                cache.set(f"s:{i}", i, tags=tags)
            figures[label] = (time.perf_counter() - started) / calls
    client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", help="a Redis to use (its database is flushed); default: one started here")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        rounds = [one_round(url, args.keys) for _ in range(args.rounds)]
    medians = {label: statistics.median(r[label] for r in rounds) for label in rounds[0]}
    print(f"{args.keys:,} keys deleted among {2 * args.keys:,}; medians of {args.rounds} rounds")
    for label, seconds in medians.items():
        unit = f"{seconds * 1e6:8.1f} us" if "per call" in label else f"{seconds * 1000:8.1f} ms"
        print(f"  {label:42s} {unit}")
    print(f"  delete_prefix / raw:   {medians['delete_prefix'] / medians['raw SCAN + UNLINK']:.2f}x")
    print(f"  invalidate_tags / raw: {medians['invalidate_tags'] / medians['raw UNLINK of a known list']:.2f}x")
    tagged = medians["set, one tag (per call)"] / medians["set, untagged (per call)"]
    print(f"  tagged set / set:      {tagged:.2f}x")


if __name__ == "__main__":
    main()
