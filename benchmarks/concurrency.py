"""Concurrent async L2 reads: N tasks each get() a different key that is in Redis but not in
L1, gathered, against raw redis.asyncio GETs gathered the same way (each task one GET +
msgpack.unpackb). Wall time per burst, and the GET/MGET commands the server ran for it
(INFO commandstats), at 1, 10, 100 and 1000 concurrent callers; rounds alternate the two
sides so a change of load cannot favour either.

    python benchmarks/concurrency.py [--rounds 30] [--redis URL] [--levels 1,10,100,200,1000]
                                   [--png FILE] [--json FILE]

Target (shared/BENCHMARKS.md, issue 12): 200 concurrent L2-hit gets take <= 20 Redis
commands and <= 0.5x the wall time of the raw gathered GETs. Each round also times the same
number of concurrent sets against raw pipelines (SET PX + PUBLISH) gathered the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import msgpack
import redis
import redis.asyncio as redis_aio

from tiercache import AsyncTieredCache
from tiercache.local import EXTENSION
from tiercache.testing import redis_url

VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "ops"], "score": 9.5}
LEVELS = (1, 10, 100, 200, 1000)


def read_commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget"))


async def measure(url: str, rounds: int, levels: tuple[int, ...] = LEVELS) -> dict[str, dict[int, Any]]:
    """{"tiered" | "raw": {level: (median wall seconds of a burst of reads, read commands per
    burst, median wall seconds of a burst of writes)}}."""
    most = max(levels)
    keys = [f"key:{i}" for i in range(most)]
    counter = redis.Redis.from_url(url)
    raw = redis_aio.Redis.from_url(url, max_connections=2 * most)
    unpack, pack = msgpack.unpackb, msgpack.packb
    await raw.mset({f"raw:{key}": msgpack.packb(VALUE) for key in keys})
    raw_keys = [f"raw:{key}" for key in keys]
    results: dict[str, dict[int, Any]] = {"tiered": {}, "raw": {}}
    async with AsyncTieredCache.from_url(url, name="concurrency", l1_maxsize=2 * most) as cache:
        await cache.wait_ready()
        await cache.set_many(dict.fromkeys(keys, VALUE))

        async def raw_get(key: str) -> Any:
            return unpack(await raw.get(key))

        async def raw_set(key: str) -> Any:
            async with raw.pipeline(transaction=False) as pipe:
                pipe.set(key, pack(VALUE), px=300_000)
                pipe.publish(b"concurrency:channel", b"x" * 60)
                return await pipe.execute()

        for level in levels:
            walls: dict[str, list[float]] = {"tiered": [], "raw": []}
            commands: dict[str, list[int]] = {"tiered": [], "raw": []}
            write_walls: dict[str, list[float]] = {"tiered": [], "raw": []}
            for _ in range(rounds):
                for side in ("tiered", "raw"):
                    cache.l1.clear()
                    before = read_commands(counter)
                    started = time.perf_counter()
                    if side == "tiered":
                        await asyncio.gather(*(cache.get(key) for key in keys[:level]))
                    else:
                        await asyncio.gather(*(raw_get(key) for key in raw_keys[:level]))
                    walls[side].append(time.perf_counter() - started)
                    commands[side].append(read_commands(counter) - before)
                    started = time.perf_counter()
                    if side == "tiered":
                        await asyncio.gather(*(cache.set(key, VALUE) for key in keys[:level]))
                    else:
                        await asyncio.gather(*(raw_set(key) for key in raw_keys[:level]))
                    write_walls[side].append(time.perf_counter() - started)
            for side in ("tiered", "raw"):
                results[side][level] = (
                    statistics.median(walls[side]), statistics.median(commands[side]),
                    statistics.median(write_walls[side]),
                )  # fmt: skip
    await raw.aclose()
    counter.close()
    return results


def plot(results: dict[str, dict[int, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(10, 4))
    for side, label in (("tiered", "AsyncTieredCache.get (batched)"), ("raw", "redis.asyncio GET")):
        levels = sorted(results[side])
        walls = [results[side][n][0] for n in levels]  # reads
        latency.plot(levels, [w * 1e3 for w in walls], marker="o", label=label)
        throughput.plot(levels, [n / w for n, w in zip(levels, walls, strict=True)], marker="o", label=label)
    for axes, title, unit in ((latency, "burst latency", "ms"), (throughput, "throughput", "gets / s")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("concurrent callers")
        axes.set_ylabel(unit)
        axes.set_title(title)
        axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def numbers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--redis", help="Redis URL (default: an embedded redis-server)")
    parser.add_argument("--levels", type=numbers, default=LEVELS, help="numbers of concurrent callers, comma-separated")
    parser.add_argument("--png", help="write a plot of latency and throughput by concurrency")
    parser.add_argument("--json", help="also write the medians here, for benchmarks/report.py")
    args = parser.parse_args()
    with redis_url(args.redis) as url:
        results = asyncio.run(measure(url, args.rounds, args.levels))
    if args.json:
        sides = {
            side: {
                str(level): dict(zip(("read_wall", "read_commands", "write_wall"), figures))
                for level, figures in by_level.items()
            }
            for side, by_level in results.items()
        }
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "concurrency", "extension": EXTENSION, "args": vars(args), "results": sides},
                handle,
                indent=1,
            )
    print("reads: AsyncTieredCache.get (L2 hit) vs redis.asyncio GET + unpackb, gathered")
    print(f"{'callers':>8} {'tiered ms':>10} {'raw ms':>10} {'ratio':>7} {'tiered cmds':>12} {'raw cmds':>9}")
    for level in sorted(results["tiered"]):
        (wall, cmds, _), (raw_wall, raw_cmds, _) = results["tiered"][level], results["raw"][level]
        print(
            f"{level:>8} {wall * 1e3:>10.3f} {raw_wall * 1e3:>10.3f} {wall / raw_wall:>6.2f}x {cmds:>12.0f} {raw_cmds:>9.0f}"
        )
    print("writes: AsyncTieredCache.set vs a redis.asyncio pipeline (SET PX + PUBLISH) + packb, gathered")
    print(f"{'callers':>8} {'tiered ms':>10} {'raw ms':>10} {'ratio':>7}")
    for level in sorted(results["tiered"]):
        wall, raw_wall = results["tiered"][level][2], results["raw"][level][2]
        print(f"{level:>8} {wall * 1e3:>10.3f} {raw_wall * 1e3:>10.3f} {wall / raw_wall:>6.2f}x")
    if args.png:
        plot(results, args.png)


if __name__ == "__main__":
    main()
