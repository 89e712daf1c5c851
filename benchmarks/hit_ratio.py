"""Hit ratio of LocalCache's policies against libcachesim on zipf traces.

    python benchmarks/hit_ratio.py [--requests 1000000 --objects 100000]

libcachesim's SyntheticReader makes the trace; its LRU, S3-FIFO and W-TinyLFU simulate it,
and LocalCache replays the same object ids (get, and set on a miss). Cache sizes are counts
of objects (every object has size 1). Targets (shared/BENCHMARKS.md): lru within 0.5 point
of libcachesim LRU; s3fifo within 1 point of W-TinyLFU.
"""

from __future__ import annotations

import argparse

import libcachesim

from tiercache import LocalCache

REFERENCES = {"LRU": libcachesim.LRU, "S3FIFO": libcachesim.S3FIFO, "W-TinyLFU": libcachesim.WTinyLFU}


def replay(cache, trace) -> float:
    hits = 0
    for obj in trace:
        if cache.get(obj) is None:
            cache.set(obj, True)
        else:
            hits += 1
    return hits / len(trace)


def run(requests: int, objects: int, alphas=(0.8, 1.0), fractions=(0.01, 0.1), seed: int = 42):
    """Rows of (alpha, fraction, {name: hit ratio})."""
    rows = []
    for alpha in alphas:
        reader = libcachesim.SyntheticReader(
            requests, obj_size=1, alpha=alpha, dist="zipf", num_objects=objects, seed=seed
        )
        trace = reader.obj_ids.tolist()
        for fraction in fractions:
            size = max(1, int(objects * fraction))
            ratios = {}
            for name, algorithm in REFERENCES.items():
                reader.reset()
                miss_ratio, _ = algorithm(cache_size=size).process_trace(reader)
                ratios[name] = 1 - miss_ratio
            ratios["LocalCache lru"] = replay(LocalCache(size), trace)
            ratios["LocalCache s3fifo"] = replay(LocalCache(size, policy="s3fifo"), trace)
            rows.append((alpha, fraction, ratios))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=100_000)
    args = parser.parse_args()
    print(f"zipf, {args.requests:,} requests over {args.objects:,} objects; hit ratios")
    header = ["alpha", "cache", *REFERENCES, "lru", "s3fifo", "lru-LRU", "s3fifo-WTLFU"]
    print("  ".join(f"{h:>9s}" for h in header))
    for alpha, fraction, r in run(args.requests, args.objects):
        lru_gap = (r["LocalCache lru"] - r["LRU"]) * 100
        s3_gap = (r["LocalCache s3fifo"] - r["W-TinyLFU"]) * 100
        cells = [f"{alpha:9.1f}", f"{fraction:9.0%}"]
        cells += [f"{r[name]:9.4f}" for name in [*REFERENCES, "LocalCache lru", "LocalCache s3fifo"]]
        cells += [f"{lru_gap:+8.2f}pt", f"{s3_gap:+8.2f}pt"]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
