"""Many threads reading from Redis at once: does a sync service need concurrent gets
batched into one MGET, as AsyncTieredCache does for tasks? Measured before building it.

    python benchmarks/threads.py [--seconds 2] [--levels 1,8,32,64] [--redis URL] [--json FILE]

For 1, 8, 32 and 64 threads, each looping over L2-hit reads of its own keys (L1 off, so
every read goes to Redis), the throughput of TieredCache.get and of raw redis-py GET +
msgpack.unpackb, and the bound batching could reach: the same threads reading through
MGET of 32 keys at a time (what a batch of 32 concurrent callers would cost per key).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable

import msgpack
import redis

from tiercache import TieredCache
from tiercache.local import EXTENSION
from tiercache.testing import redis_url

VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "ops"], "score": 9.5}
KEYS = 2_000
BATCH = 32
LEVELS = (1, 8, 32, 64)


def throughput(threads: int, seconds: float, work: Callable[[int], int]) -> float:
    """Reads a second by threads threads each running work(index) in a loop (work returns
    how many reads it did) for about seconds."""
    done = [0] * threads
    stop = threading.Event()

    def run(index: int) -> None:
        while not stop.is_set():
            done[index] += work(index)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(done) / (time.perf_counter() - start)


def run(url: str, seconds: float, levels: tuple[int, ...] = LEVELS) -> dict[int, tuple[float, float, float]]:
    """Reads a second at each number of threads: (TieredCache.get, raw GET, MGET bound)."""
    keys = [f"key:{i}" for i in range(KEYS)]
    raw = redis.Redis.from_url(url, max_connections=200)
    raw_keys = [f"raw:{key}" for key in keys]
    raw.mset({raw_key: msgpack.packb(VALUE) for raw_key in raw_keys})
    unpack = msgpack.unpackb
    rates: dict[int, tuple[float, float, float]] = {}
    with TieredCache.from_url(url, name="threads", l1_maxsize=0, redis_options={"max_connections": 200}) as cache:
        cache.set_many(dict.fromkeys(keys, VALUE))

        def tiered(index: int) -> int:
            for key in keys[index * 16 : index * 16 + 16]:
                cache.get(key)
            return 16

        def raw_get(index: int) -> int:
            for key in raw_keys[index * 16 : index * 16 + 16]:
                unpack(raw.get(key))
            return 16

        def raw_mget(index: int) -> int:
            for blob in raw.mget(raw_keys[:BATCH]):
                unpack(blob)
            return BATCH

        for threads in levels:
            tiered_rate, raw_rate, bound = (throughput(threads, seconds, work) for work in (tiered, raw_get, raw_mget))
            rates[threads] = (tiered_rate, raw_rate, bound)
    raw.close()
    return rates


def numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--levels", type=numbers, default=LEVELS, help="numbers of threads, comma-separated")
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--json", help="also write the rates here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        rates = run(url, args.seconds, args.levels)
    if args.json:
        by_level = {str(n): dict(zip(("tiered", "raw", "mget_bound"), figures)) for n, figures in rates.items()}
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "threads", "extension": EXTENSION, "args": vars(args), "results": by_level}, handle, indent=1
            )
    print(f"{'threads':>8} {'TieredCache.get':>16} {'raw GET':>10} {'ratio':>6} {'MGET(32) bound':>15}   reads/s")
    for threads, (tiered, raw, bound) in rates.items():
        print(f"{threads:>8} {tiered:>16,.0f} {raw:>10,.0f} {tiered / raw:>6.2f} {bound:>15,.0f}")


if __name__ == "__main__":
    main()
