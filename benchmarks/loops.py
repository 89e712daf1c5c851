"""The Redis-bound paths timed as a service runs them: loops over many distinct keys, each
case's wall time and this process's CPU time (time.process_time), the cases round-robin.

    python benchmarks/loops.py [--rounds 40] [--redis URL] [--json FILE]

Ratios of medians, against shared/BENCHMARKS.md's targets:

  TieredCache.get, L2 hit (L1 emptied before each pass) vs raw GET + msgpack.unpackb
                                          CPU <= 1.10x, wall <= 1.05x
  TieredCache.get_many(100) from Redis vs raw MGET + unpackb        CPU <= 1.15x
  TieredCache.set vs raw pipeline (SET PX + PUBLISH) + packb        CPU <= 1.15x
  TieredCache.delete vs raw pipeline (DEL + PUBLISH)                CPU <= 1.15x
  TieredCache.get, L1 hit vs dict.get                               <= 1.4x
  AsyncTieredCache.get, L1 hit vs await of a coroutine doing dict.get <= 1.5x
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from collections.abc import Callable

import msgpack
import redis

from tiercache import AsyncTieredCache, TieredCache
from tiercache.local import EXTENSION
from tiercache.testing import redis_url

VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "ops"], "score": 9.5}
KEYS = 400


def run(url: str, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of one pass of each case."""
    keys = [f"key:{i}" for i in range(KEYS)]
    raw_keys = [f"raw:{key}" for key in keys]
    raw = redis.Redis.from_url(url)
    raw.mset({raw_key: msgpack.packb(VALUE) for raw_key in raw_keys})
    unpack, pack = msgpack.unpackb, msgpack.packb
    with TieredCache.from_url(url, name="loops", l1_maxsize=10 * KEYS) as cache:
        cache.wait_ready()
        cache.set_many(dict.fromkeys(keys, VALUE))
        plain = dict.fromkeys(keys, VALUE)
        get, plain_get = cache.get, plain.get

        def raw_gets() -> None:
            for raw_key in raw_keys:
                unpack(raw.get(raw_key))

        def tiered_gets() -> None:
            for key in keys:
                get(key)

        def raw_mgets() -> None:
            for start in range(0, KEYS, 100):
                batch = raw_keys[start : start + 100]
                {key: unpack(blob) for key, blob in zip(batch, raw.mget(batch))}

        def tiered_mgets() -> None:
            for start in range(0, KEYS, 100):
                cache.get_many(keys[start : start + 100])

        def raw_sets() -> None:
            for raw_key in raw_keys:
                with raw.pipeline(transaction=False) as pipe:
                    pipe.set(raw_key, pack(VALUE), px=300_000)
                    pipe.publish(b"loops:channel", b"x" * 60)  # a message the size of ours
                    pipe.execute()

        def raw_sets_heard() -> None:  # as a raw write-through must: its own process listens
            for raw_key in raw_keys:
                with raw.pipeline(transaction=False) as pipe:
                    pipe.set(raw_key, pack(VALUE), px=300_000)
                    pipe.publish(b"loops:heard", b"x" * 60)
                    pipe.execute()

        def tiered_sets() -> None:
            for key in keys:
                cache.set(key, VALUE)

        doomed = [f"doomed:{key}" for key in keys]  # deleted each pass, refilled untimed
        raw_doomed = [f"raw:{key}" for key in doomed]

        def refill_raw() -> None:
            raw.mset({raw_key: pack(VALUE) for raw_key in raw_doomed})

        def refill_tiered() -> None:
            cache.set_many(dict.fromkeys(doomed, VALUE))

        def raw_deletes() -> None:
            for raw_key in raw_doomed:
                with raw.pipeline(transaction=False) as pipe:
                    pipe.delete(raw_key)
                    pipe.publish(b"loops:channel", b"x" * 60)
                    pipe.execute()

        def tiered_deletes() -> None:
            for key in doomed:
                cache.delete(key)

        def dict_hits() -> None:
            for _ in range(50):
                for key in keys:
                    plain_get(key)

        def l1_hits() -> None:
            for _ in range(50):
                for key in keys:
                    get(key)

        loop = asyncio.new_event_loop()
        async_cache = AsyncTieredCache.from_url(url, name="loops-async", l1_maxsize=10 * KEYS)
        loop.run_until_complete(async_cache.wait_ready())
        loop.run_until_complete(async_cache.set_many(dict.fromkeys(keys, VALUE)))
        aget = async_cache.get

        async def lookup(key: str) -> object:
            return plain_get(key)

        async def coroutine_hits() -> None:
            for _ in range(50):
                for key in keys:
                    await lookup(key)

        async def async_l1_hits() -> None:
            for _ in range(50):
                for key in keys:
                    await aget(key)

        # (case, untimed set-up before it)
        cases: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {
            "raw GET": (raw_gets, None),
            "TieredCache.get L2 hit": (tiered_gets, cache.l1.clear),
            "raw MGET(100)": (raw_mgets, None),
            "TieredCache.get_many(100)": (tiered_mgets, cache.l1.clear),
            "raw SET+PUBLISH": (raw_sets, None),
            "raw SET+PUBLISH, heard": (raw_sets_heard, None),
            "TieredCache.set": (tiered_sets, None),
            "raw DEL+PUBLISH": (raw_deletes, refill_raw),
            "TieredCache.delete": (tiered_deletes, refill_tiered),
            "dict.get": (dict_hits, None),
            "TieredCache.get L1 hit": (l1_hits, tiered_gets),
            "await coroutine dict.get": (lambda: loop.run_until_complete(coroutine_hits()), None),
            "AsyncTieredCache.get L1 hit": (lambda: loop.run_until_complete(async_l1_hits()), None),
        }
        times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in cases}
        listening = threading.Event()
        stop = threading.Event()
        listener = threading.Thread(target=_listen, args=(url, listening, stop), daemon=True)
        listener.start()
        listening.wait(5)
        for _ in range(rounds):
            for name, (case, setup) in cases.items():
                if setup is not None:
                    setup()
                wall, cpu = time.perf_counter(), time.process_time()
                case()
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
        stop.set()
        listener.join(5)
        loop.run_until_complete(async_cache.close())
        loop.close()
    raw.close()
    return {name: (statistics.median(walls), statistics.median(cpus)) for name, (walls, cpus) in times.items()}


def _listen(url: str, listening: threading.Event, stop: threading.Event) -> None:
    """A raw subscriber thread in this process (what TieredCache's subscriber is to it): it
    reads and decodes every message on loops:heard."""
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(b"loops:heard")
    listening.set()
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.05)
        if message is not None:
            bytes(message["data"]).decode()
    pubsub.close()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--json", help="also write the medians here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        medians = run(url, args.rounds)
    if args.json:
        cases = {case: {"wall": wall, "cpu": cpu} for case, (wall, cpu) in medians.items()}
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "loops", "extension": EXTENSION, "args": vars(args), "results": cases}, handle, indent=1
            )
    for case, floor, target in (
        ("TieredCache.get L2 hit", "raw GET", "CPU <= 1.10x, wall <= 1.05x"),
        ("TieredCache.get_many(100)", "raw MGET(100)", "CPU <= 1.15x"),
        ("TieredCache.set", "raw SET+PUBLISH", "CPU <= 1.15x"),
        ("TieredCache.set", "raw SET+PUBLISH, heard", "(a raw write-through's own subscriber counted)"),
        ("TieredCache.delete", "raw DEL+PUBLISH", "CPU <= 1.15x"),
        ("TieredCache.get L1 hit", "dict.get", "<= 1.4x"),
        ("AsyncTieredCache.get L1 hit", "await coroutine dict.get", "<= 1.5x"),
    ):
        wall = medians[case][0] / medians[floor][0]
        cpu = medians[case][1] / medians[floor][1]
        print(f"{case:28s} vs {floor:16s} wall {wall:.3f}x  CPU {cpu:.3f}x   (target {target})")


if __name__ == "__main__":
    main()
