"""Memory per entry beyond the key and value objects, at N resident entries.

    python benchmarks/memory.py [--entries 1000000] [--json FILE]

Each case runs in a fresh interpreter. Keys (2N distinct str objects) and the one shared
value exist before the first reading, so the RSS growth after filling the cache is what the
cache itself costs. Bounded caches get 2N inserts into maxsize N, so they are measured at
steady state, full and evicting (S3-FIFO's ghost queue included); dict gets N.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

CASES = {
    "dict": "cache = {}; setter = cache.__setitem__; inserts = n",
    "LocalCache lru": "from tiercache import LocalCache; cache = LocalCache(n); setter = cache.set",
    "LocalCache lru+ttl": "from tiercache import LocalCache; cache = LocalCache(n, ttl=3600); setter = cache.set",
    "LocalCache s3fifo": "from tiercache import LocalCache; cache = LocalCache(n, policy='s3fifo'); setter = cache.set",
    "cachebox.LRUCache": "import cachebox; cache = cachebox.LRUCache(n); setter = cache.insert",
    "cachebox.VTTLCache": "import cachebox; cache = cachebox.VTTLCache(n); setter = lambda k, v: cache.insert(k, v, 3600)",
    "lru-dict": "import lru; cache = lru.LRU(n); setter = cache.__setitem__",
    "cachetools.LRUCache": "import cachetools; cache = cachetools.LRUCache(n); setter = cache.__setitem__",
    "cachetools.TTLCache": "import cachetools; cache = cachetools.TTLCache(n, 3600); setter = cache.__setitem__",
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import resource

    return pages * resource.getpagesize()


def measure(case: str, n: int) -> float:
    """Bytes per resident entry for one case, in this process."""
    keys = [f"key:{i}" for i in range(2 * n)]
    value = object()
    scope = {"n": n}
    exec(CASES[case], scope)  # imports happen before the first reading
    cache, setter = scope["cache"], scope["setter"]
    inserts = scope.get("inserts", 2 * n)
    gc.collect()
    before = rss_bytes()
    for key in keys[:inserts]:
        setter(key, value)
    gc.collect()
    after = rss_bytes()
    assert len(cache) == n, (case, len(cache))
    return (after - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--json", help="also write bytes per entry here, for benchmarks/report.py")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.entries)))
        return
    print(f"bytes per entry beyond key and value, {args.entries:,} resident entries (RSS delta)")
    per_entry = {}
    for case in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--entries", str(args.entries), "--case", case],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        per_entry[case] = json.loads(out)
        print(f"  {case:22s} {per_entry[case]:7.1f}")
    if args.json:
        from tiercache.local import EXTENSION

        with open(args.json, "w") as handle:
            json.dump(
                {"script": "memory", "extension": EXTENSION, "args": vars(args), "results": per_entry}, handle, indent=1
            )


if __name__ == "__main__":
    main()
