"""The semantic cache's lookups, by scope size: a warm lookup (this process's index is
current) against a first lookup (the scope loaded from Redis), exact search against an
approximate index, and memory per entry in each tier.

    python benchmarks/semantic.py [--sizes 1000,10000,100000] [--dim 384] [--rounds 200]

Vectors are random unit vectors of --dim dimensions (a model's embeddings would do the
same: the search cost depends on the count and the dimension, not the values); the lookup
asks for a stored vector with a little noise, so every lookup is a hit. Starts its own
redis-server. Times are medians of --rounds lookups, each timed alone (a lookup is long
enough, 10 us and up, for the timer not to matter), in this process's wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np

from tiercache import TieredCache
from tiercache.semantic import ScopeIndex, SemanticCache
from tiercache.testing import RedisServer


class Vectors:
    """embed() for the benchmark: the text names a stored vector ("v123"), or "q123", that
    vector with noise."""

    def __init__(self, count: int, dim: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        stored = rng.standard_normal((count, dim)).astype(np.float32)
        self.stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
        noise = rng.standard_normal((count, dim)).astype(np.float32) * 0.02
        self.queries = self.stored + noise

    def __call__(self, text: str) -> np.ndarray:
        table = self.stored if text[0] == "v" else self.queries
        return table[int(text[1:])]


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def bench_size(url: str, count: int, dim: int, rounds: int) -> dict[str, float]:
    vectors = Vectors(count, dim)
    name = f"semantic-bench-{count}"
    figures: dict[str, float] = {"entries": count, "dim": dim}
    with TieredCache.from_url(url, name=name, default_ttl=3600) as cache:
        cache.wait_ready(10)
        writer = SemanticCache(cache, embed=vectors, threshold=0.8)
        used_before = cache.redis.info("memory")["used_memory"]
        started = time.perf_counter()
        for i in range(count):
            writer.set(f"v{i}", f"answer {i}", scope="s")
        figures["set_us"] = (time.perf_counter() - started) / count * 1e6
        figures["l2_bytes_per_entry"] = (cache.redis.info("memory")["used_memory"] - used_before) / count
        rng = np.random.default_rng(1)
        picks = rng.integers(0, count, rounds)

        # warm: the writer's index is current (its first lookup after the writes refreshes it)
        writer.get("q0", scope="s")
        warm = []
        for i in picks:
            began = time.perf_counter()
            match = writer.get(f"q{i}", scope="s")
            warm.append(time.perf_counter() - began)
            assert match is not None and match.answer == f"answer {i}"
        figures["warm_lookup_us"] = median_us(warm)

        # a process that has not seen the scope: its first lookup loads it from Redis
        cold = []
        for i in picks[: max(3, rounds // 20)]:
            with TieredCache.from_url(url, name=name) as other:
                other.wait_ready(10)
                reader = SemanticCache(other, embed=vectors, threshold=0.8)
                began = time.perf_counter()
                match = reader.get(f"q{i}", scope="s")
                cold.append(time.perf_counter() - began)
                assert match is not None and match.answer == f"answer {i}"
        figures["first_lookup_ms"] = statistics.median(cold) * 1e3

        # the index alone: exact search, and memory per entry
        tracemalloc.start()
        index = ScopeIndex(dim)
        for i in range(count):
            index.upsert(str(i), vectors.stored[i], float("inf"), ("answer", "context", None))
        figures["l1_bytes_per_entry"] = tracemalloc.get_traced_memory()[0] / count
        tracemalloc.stop()
        exact = []
        for i in picks:
            began = time.perf_counter()
            index.nearest(vectors.queries[i], 0.0)
            exact.append(time.perf_counter() - began)
        figures["exact_search_us"] = median_us(exact)
        figures.update(bench_ann(vectors, picks))
        cache.clear()
    return figures


def bench_ann(vectors: Vectors, picks: np.ndarray) -> dict[str, float]:
    """Approximate indexes on the same vectors, those installed: build time, search, recall@1
    (how often the nearest is the stored vector the query was made from)."""
    figures: dict[str, float] = {}
    count, dim = vectors.stored.shape
    try:
        import hnswlib
    except ImportError:
        pass
    else:
        hnsw = hnswlib.Index(space="ip", dim=dim)
        started = time.perf_counter()
        hnsw.init_index(max_elements=count, ef_construction=100, M=16)
        hnsw.add_items(vectors.stored, np.arange(count))
        figures["hnswlib_build_s"] = time.perf_counter() - started
        hnsw.set_ef(50)
        figures.update(_timed("hnswlib", picks, lambda i: int(hnsw.knn_query(vectors.queries[i], k=1)[0][0][0])))
    try:
        from usearch.index import Index
    except ImportError:
        pass
    else:
        index = Index(ndim=dim, metric="ip", dtype="f32")
        started = time.perf_counter()
        index.add(np.arange(count), vectors.stored)
        figures["usearch_build_s"] = time.perf_counter() - started
        figures.update(_timed("usearch", picks, lambda i: int(index.search(vectors.queries[i], 1).keys[0])))
    return figures


def _timed(name: str, picks: np.ndarray, search: Any) -> dict[str, float]:
    times, found = [], 0
    for i in picks:
        began = time.perf_counter()
        label = search(i)
        times.append(time.perf_counter() - began)
        found += label == int(i)
    return {f"{name}_search_us": median_us(times), f"{name}_recall_at_1": found / len(picks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    results = []
    with RedisServer() as server:
        for count in (int(size) for size in args.sizes.split(",")):
            figures = bench_size(server.url, count, args.dim, args.rounds)
            results.append(figures)
            ann = "".join(
                f", {lib} {figures[f'{lib}_search_us']:.1f} us (recall@1 {figures[f'{lib}_recall_at_1']:.3f}, "
                f"built in {figures[f'{lib}_build_s']:.2f} s)"
                for lib in ("hnswlib", "usearch")
                if f"{lib}_search_us" in figures
            )
            print(
                f"{count:>8,} entries x {args.dim}: warm lookup {figures['warm_lookup_us']:.1f} us; "
                f"search alone: exact {figures['exact_search_us']:.1f} us{ann}; "
                f"first lookup in a process {figures['first_lookup_ms']:.1f} ms; set {figures['set_us']:.0f} us; "
                f"memory per entry: L1 {figures['l1_bytes_per_entry']:.0f} B, Redis {figures['l2_bytes_per_entry']:.0f} B"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
