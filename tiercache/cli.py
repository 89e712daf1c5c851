"""Command line: ``python -m tiercache demo`` (the fleet demo, tiercache.demo), ``tour`` (a
walk through the API, one call at a time), ``verify`` (the consistency checker) and
``embedded status|stop DIR``."""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.parse
import urllib.request

from . import EXTENSION, AsyncTieredCache, LocalCache, TieredCache, demo, verify


def tour(url: str | None = None) -> None:
    """Walk through both tiers, one call at a time."""
    local_demo()
    with demo.redis_for_demo(url) as redis_url:
        tiered_demo(redis_url)
        asyncio.run(async_demo(redis_url))


def local_demo() -> None:
    """The L1: reads and writes, TTL, both eviction policies, counters."""
    print(f"tiercache L1 implementation: {'compiled (tiercache._local_c)' if EXTENSION else 'pure Python'}")

    l1 = LocalCache(maxsize=3, ttl=60)
    l1.set("user:1", {"name": "Ada"})
    l1["user:2"] = {"name": "Grace"}
    l1.set("session:9", "token", ttl=0.05)
    print("get user:1       ->", l1.get("user:1"))
    print(f"ttl user:2       -> {l1.ttl('user:2') or 0:.1f} s")
    time.sleep(0.06)
    print("session:9 after its 50 ms ttl ->", l1.get("session:9", "<expired>"))

    l1.set("user:3", 3)
    l1.set("user:4", 4)  # full: the least recently used goes
    print("lru keys, next to evict first ->", list(l1))

    hot = LocalCache(maxsize=100, policy="s3fifo")
    for i in range(20):
        hot.set(f"hot:{i}", i)
        hot.get(f"hot:{i}")
    for i in range(1_000):  # a scan of keys that are read once never displaces hot ones
        hot.set(f"scan:{i}", i)
    kept = sum(f"hot:{i}" in hot for i in range(20))
    print(f"s3fifo after a 1,000-key scan keeps {kept}/20 hot keys")
    print("stats            ->", l1.stats())


def tiered_demo(redis_url: str) -> None:
    """L1 in front of Redis: read-through, write-through, namespaces."""
    print(f"\n-- TieredCache on {redis_url}")
    database = {"user:1": {"name": "Ada"}, "user:2": {"name": "Grace"}}
    loads: list[str] = []

    def load_user(key: str) -> dict[str, str] | None:
        loads.append(key)
        return database.get(key)

    with TieredCache.from_url(redis_url, name="demo", l1_ttl=30, default_ttl=300) as cache:
        cache.clear()
        print("get_or_load user:1 ->", cache.get_or_load("user:1", load_user), f"(loader calls: {len(loads)})")
        print("again (L1 hit)     ->", cache.get_or_load("user:1", load_user), f"(loader calls: {len(loads)})")
        with TieredCache.from_url(redis_url, name="demo") as other_process:
            print("another cache reads it from Redis ->", other_process.get("user:1"))
        cache.set("user:2", {"name": "Grace Hopper"}, ttl=60)
        print("set user:2, ttl in Redis ->", cache.ttl("user:2"), "s")
        tenant = cache.namespace("tenant42")
        tenant.set("user:1", {"name": "someone else"})
        print("namespaced user:1 ->", tenant.get("user:1"), "| root user:1 ->", cache.get("user:1"))
        print("redis key of the namespaced one ->", tenant.redis_key("user:1"))
        print("incr page:views    ->", cache.incr("page:views"), cache.incr("page:views"))
        stats = cache.stats()
        print(
            f"stats: L1 hits {stats['l1_hits']}, L1 misses {stats['l1_misses']}, "
            f"L2 hits {stats['l2_hits']}, L2 misses {stats['l2_misses']}, loads {stats['loads']}"
        )
        print(f"hit ratio (either tier) -> {stats['hit_ratio']:.2f}")
        metrics_demo(cache)
        cache.clear()


def metrics_demo(cache: TieredCache) -> None:
    """What Prometheus scrapes: the cache's collector served over HTTP on a free port."""
    from prometheus_client import CollectorRegistry

    from .metrics import start_http_server

    registry = CollectorRegistry()
    cache.register_metrics(registry)
    server, thread = start_http_server(0, registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            page = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    print(f"Prometheus scrape of {url} (requests by tier):")
    for line in page.splitlines():
        if line.startswith("tiercache_requests_total"):
            print("  ", line)


async def async_demo(redis_url: str) -> None:
    """The same engine under asyncio."""
    print("\n-- AsyncTieredCache")
    async with AsyncTieredCache.from_url(redis_url, name="demo-async") as cache:

        async def load(key: str) -> str:
            await asyncio.sleep(0.01)  # a slow database
            return key.upper()

        results = await asyncio.gather(*(cache.get_or_load("cold-key", load) for _ in range(50)))
        print(f"50 concurrent get_or_load on one cold key -> {set(results)}, loader calls: {cache.stats()['loads']}")
        await cache.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiercache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="a fleet of worker processes in front of a slow source of truth, with live metrics",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    tour_parser = commands.add_parser("tour", help="walk through the API, one call at a time")
    tour_parser.add_argument(
        "--redis", help="Redis URL (default: an embedded Redis in a temporary directory, removed at the end)"
    )
    verify_parser = commands.add_parser("verify", help="check consistency across processes under faults")
    verify.add_arguments(verify_parser)
    embedded_parser = commands.add_parser("embedded", help="the embedded Redis of a directory (embedded:///dir)")
    embedded_parser.add_argument("action", choices=("status", "stop"))
    embedded_parser.add_argument("directory")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo.command(args)
    if args.command == "tour":
        tour(args.redis)
    elif args.command == "verify":
        return verify.command(args)
    elif args.command == "embedded":
        return embedded_command(args.action, args.directory)
    return 0


def embedded_command(action: str, directory: str) -> int:
    """python -m tiercache embedded status|stop DIR; exit status 1 if none is running."""
    from . import embedded

    if action == "stop":
        stopped = embedded.stop(directory)
        print(f"stopped the embedded Redis of {directory}" if stopped else f"no embedded Redis runs in {directory}")
        return 0 if stopped else 1
    report = embedded.status(directory)
    if not report["running"]:
        print(f"no embedded Redis runs in {report['directory']}")
        return 1
    keys = f"{report['keys']} keys" if "keys" in report else "busy (loading its data, or a long command)"
    print(f"running: pid {report['pid']}, socket {report['socket']}, {keys}")
    return 0
