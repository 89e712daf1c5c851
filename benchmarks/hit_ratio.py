"""Hit ratio of LocalCache's policies against libcachesim on zipf traces.

    python benchmarks/hit_ratio.py [--requests 1000000 --objects 100000] [--alphas 0.8,1.0]
                                   [--fractions 0.01,0.1] [--json FILE]

libcachesim's SyntheticReader makes the trace; its LRU, S3-FIFO and W-TinyLFU simulate it,
and LocalCache replays the same object ids (get, and set on a miss). Cache sizes are counts
of objects (every object has size 1). Targets (shared/BENCHMARKS.md): lru within 0.5 point
of libcachesim LRU; s3fifo within 1 point of W-TinyLFU.
"""

from __future__ import annotations

import argparse
import json

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


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--alphas", type=floats, default=(0.8, 1.0), help="zipf alphas, comma-separated")
    parser.add_argument(
        "--fractions", type=floats, default=(0.01, 0.1), help="cache sizes as fractions of the objects, comma-separated"
    )
    parser.add_argument("--json", help="also write the hit ratios here, for benchmarks/report.py")
    args = parser.parse_args()
    if min(args.fractions) * args.objects < 10:
        parser.error("a cache of fewer than 10 objects: libcachesim's S3FIFO aborts the process on it")
    print(f"zipf, {args.requests:,} requests over {args.objects:,} objects; hit ratios")
    header = ["alpha", "cache", *REFERENCES, "lru", "s3fifo", "lru-LRU", "s3fifo-WTLFU"]
    print("  ".join(f"{h:>9s}" for h in header))
    rows = run(args.requests, args.objects, args.alphas, args.fractions)
    if args.json:
        from tiercache.local import EXTENSION

        traces = [{"alpha": alpha, "fraction": fraction, "ratios": ratios} for alpha, fraction, ratios in rows]
        with open(args.json, "w") as handle:
            json.dump(
                {"script": "hit_ratio", "extension": EXTENSION, "args": vars(args), "results": traces}, handle, indent=1
            )
    for alpha, fraction, r in rows:
        lru_gap = (r["LocalCache lru"] - r["LRU"]) * 100
        s3_gap = (r["LocalCache s3fifo"] - r["W-TinyLFU"]) * 100
        cells = [f"{alpha:9.1f}", f"{fraction:9.0%}"]
        cells += [f"{r[name]:9.4f}" for name in [*REFERENCES, "LocalCache lru", "LocalCache s3fifo"]]
        cells += [f"{lru_gap:+8.2f}pt", f"{s3_gap:+8.2f}pt"]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
