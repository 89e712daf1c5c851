"""Redis-bound paths against raw redis-py, measured round-robin (drift-free ratios).

    python benchmarks/interleaved.py [--rounds 300]

pytest-benchmark runs one case after another, so on a shared machine a change of load
between two cases shows up as a difference between them. Here every round times each case
once, in turn, and the ratio of medians is reported:

  TieredCache.get served by Redis      vs raw GET + msgpack.unpackb   target <= 1.15x
  TieredCache.get_many(100) from Redis vs raw MGET + msgpack.unpackb  target <= 1.2x
"""

from __future__ import annotations

import argparse
import statistics
import time

import msgpack
import redis

from tiercache import TieredCache
from tiercache.testing import redis_url

VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "ops"], "score": 9.5}


def run(url: str, rounds: int) -> dict[str, float]:
    keys = [f"key:{i}" for i in range(100)]
    raw = redis.Redis.from_url(url)
    raw.mset({f"raw:{key}": msgpack.packb(VALUE) for key in keys})
    raw_keys = [f"raw:{key}" for key in keys]
    unpack = msgpack.unpackb
    with TieredCache.from_url(url, name="interleaved", l1_maxsize=1000) as cache:
        cache.wait_ready()
        cache.set_many(dict.fromkeys(keys, VALUE))
        single = keys[0]

        def raw_get():
            return unpack(raw.get(raw_keys[0]))

        def tiered_get():
            return cache.get(single)

        def raw_get_many():
            return {key: unpack(blob) for key, blob in zip(keys, raw.mget(raw_keys))}

        def tiered_get_many():
            return cache.get_many(keys)

        # (case, untimed set-up): the tiered cases first empty L1, so Redis serves them
        # (decode and the guarded L1 fill included).
        cases = {
            "raw GET": (raw_get, None),
            "TieredCache.get": (tiered_get, lambda: cache.l1.delete(single)),
            "raw MGET(100)": (raw_get_many, None),
            "TieredCache.get_many(100)": (tiered_get_many, lambda: cache.l1.delete_many(keys)),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, (case, setup) in cases.items():
                if setup is not None:
                    setup()
                began = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - began)
        assert cache.stats()["l2_hits"] >= rounds * 101
    raw.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        medians = run(url, args.rounds)
    for name, median in medians.items():
        print(f"  {name:28s} {median * 1e6:9.1f} us (median of {args.rounds})")
    get_ratio = medians["TieredCache.get"] / medians["raw GET"]
    many_ratio = medians["TieredCache.get_many(100)"] / medians["raw MGET(100)"]
    print(f"L2-hit get       {get_ratio:.3f}x raw GET + unpackb   (target <= 1.15x)")
    print(f"get_many(100)    {many_ratio:.3f}x raw MGET + unpackb  (target <= 1.2x)")


if __name__ == "__main__":
    main()
