"""Run the stand-alone benchmark scripts on small inputs so they cannot rot in CI.

The figures they print at full size are quoted from real runs (make bench-memory,
make bench-hit-ratio), not from here.
"""

from __future__ import annotations

import math

from . import hit_ratio, memory


def test_memory_script_measures_every_case():
    for case in memory.CASES:
        per_entry = memory.measure(case, 20_000)  # asserts the cache is full inside
        assert math.isfinite(per_entry)


def test_hit_ratio_script_replays_the_reference_trace():
    rows = hit_ratio.run(requests=20_000, objects=2_000, alphas=(0.9,), fractions=(0.05,))
    ((_, _, ratios),) = rows
    assert set(ratios) == {"LRU", "S3FIFO", "W-TinyLFU", "LocalCache lru", "LocalCache s3fifo"}
    assert math.isclose(ratios["LocalCache lru"], ratios["LRU"])  # exact LRU, same trace


def test_invalidation_lag_script_measures_every_round(redis_server):
    from . import invalidation_lag

    lags, from_call, histogram = invalidation_lag.measure(redis_server.url, rounds=5)
    assert len(lags) == len(from_call) == 5
    assert all(lag >= 0 for lag in lags)
    assert histogram["count"] == 5  # the reader's metric saw every write
    assert invalidation_lag.histogram_p99(histogram) in histogram["buckets"]


def test_interleaved_script_times_every_case(redis_server):
    from . import interleaved

    medians = interleaved.run(redis_server.url, rounds=3)
    assert set(medians) == {"raw GET", "TieredCache.get", "raw MGET(100)", "TieredCache.get_many(100)"}


def test_metrics_overhead_script_times_both_cases(redis_server):
    from . import metrics_overhead

    per_get = metrics_overhead.run(redis_server.url, rounds=2)
    assert set(per_get) == {"without", "registered"}
    assert all(seconds > 0 for seconds in per_get.values())


def test_threads_script_measures_every_level(redis_server):
    from . import threads

    rates = threads.run(redis_server.url, seconds=0.05, levels=(1, 4))
    assert set(rates) == {1, 4}
    assert all(rate > 0 for level in rates.values() for rate in level)


def test_loops_script_times_every_case(redis_server):
    from . import loops

    medians = loops.run(redis_server.url, rounds=2)
    assert len(medians) == 13 and all(wall > 0 and cpu >= 0 for wall, cpu in medians.values())


async def test_concurrency_script_counts_commands_and_times_both_sides(redis_server):
    from . import concurrency

    results = await concurrency.measure(redis_server.url, rounds=1, levels=(1, 20))
    assert results["tiered"][20][1] == 1 and results["raw"][20][1] == 20  # one MGET vs 20 GETs
    assert all(wall > 0 and write_wall > 0 for side in results.values() for wall, _, write_wall in side.values())


def test_bulk_script_times_every_case():
    from tiercache.testing import RedisServer

    from . import bulk

    with RedisServer() as server:  # its own: the script flushes the database
        figures = bulk.one_round(server.url, 300)
    assert {"delete_prefix", "raw SCAN + UNLINK", "invalidate_tags", "raw UNLINK of a known list"} <= set(figures)
    assert all(seconds > 0 for seconds in figures.values())


def test_hot_keys_script_counts_every_read(redis_server):
    from . import hot_keys

    counts = hot_keys.run(redis_server.url, "early_refresh", {"early_refresh": True}, 2, 0.5, 20)
    assert counts["reads"] > 0 and 0 <= counts["waited"] <= counts["reads"] and counts["loads"] >= 1


def test_cluster_script_measures_every_figure():
    from . import cluster

    results = cluster.run(rounds=2, lag_rounds=3, failovers=1)
    assert set(results["get_many"]) == {"one Redis", "cluster"}
    assert all(len(lags) == 3 for lags in (*results["lag"].values(), *results["pubsub"].values()))
    assert all(seconds > 0 for times in results["failover"].values() for seconds in times)
