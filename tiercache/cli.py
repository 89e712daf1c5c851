"""Command line: ``python -m tiercache demo``."""

from __future__ import annotations

import argparse
import time

from . import EXTENSION, LocalCache


def demo() -> None:
    """Walk through the L1: reads and writes, TTL, both eviction policies, counters."""
    print(f"tiercache L1 implementation: {'compiled (tiercache._local_c)' if EXTENSION else 'pure Python'}")

    l1 = LocalCache(maxsize=3, ttl=60)
    l1.set("user:1", {"name": "Ada"})
    l1["user:2"] = {"name": "Grace"}
    l1.set("session:9", "token", ttl=0.05)
    print("get user:1       ->", l1.get("user:1"))
    print("ttl user:2       -> %.1f s" % l1.ttl("user:2"))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tiercache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="walk through what the cache does")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo()
    return 0
