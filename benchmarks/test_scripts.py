"""Run the stand-alone benchmark scripts on small inputs so they cannot rot in CI.

The figures they print at full size are quoted from real runs (make bench), not from here.
benchmarks/report.py is run on the JSON files of one tiny run of every script and of the
pytest-benchmark suites, and must judge every target of shared/BENCHMARKS.md from them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_stampede_script_counts_the_fleet_s_loader_calls(redis_server):
    from . import stampede

    (figures,) = stampede.run(redis_server.url, processes=2, threads=4, repeats=1, loader_seconds=0.05)
    assert figures["callers"] == figures["got_value"] == 8  # every thread of both processes got the value
    assert figures["loader_calls"] >= 1  # the figure the report judges (1 is the target)


# -- benchmarks/report.py on the real outputs of tiny runs --------------------------------------

# each script as make bench runs it, on tiny settings: (file name, module, arguments)
TINY_RUNS = [
    ("loops-1.json", "loops", ["--rounds", "1"]),
    ("loops-2.json", "loops", ["--rounds", "1"]),
    ("metrics_overhead.json", "metrics_overhead", ["--rounds", "2"]),
    ("concurrency.json", "concurrency", ["--rounds", "1", "--levels", "1,200"]),
    ("threads.json", "threads", ["--seconds", "0.02", "--levels", "1,4"]),
    ("invalidation_lag.json", "invalidation_lag", ["--rounds", "5"]),
    ("stampede.json", "stampede", ["--processes", "2", "--threads", "3", "--repeats", "1", "--loader-seconds", "0.05"]),
    ("memory.json", "memory", ["--entries", "2000"]),
    ("hit_ratio.json", "hit_ratio", ["--requests", "5000", "--objects", "1000", "--fractions", "0.01,0.1"]),
]
# the pytest-benchmark groups the targets are judged on (the others only fill the plot)
TINY_BENCH = "get_hit or set_full or tiered_l1_hit or async_l1_hit or with_and_without_collector"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, redis_server):
    """The JSON files of one tiny make bench: a pytest-benchmark run and every script's --json."""
    import importlib

    out = tmp_path_factory.mktemp("results")
    here = Path(__file__).resolve().parent
    subprocess.run(
        [sys.executable, "-m", "pytest", str(here), "-q", "-p", "no:cacheprovider", "-k", TINY_BENCH,
         "--benchmark-only", "--benchmark-min-rounds=1", "--benchmark-max-time=0.0001",
         f"--benchmark-json={out / 'run-1.json'}"],
        check=True, capture_output=True, cwd=here.parent,
    )  # fmt: skip
    for name, module, args in TINY_RUNS:
        script = importlib.import_module(f"{__package__}.{module}")
        redis = [] if module in ("memory", "hit_ratio") else ["--redis", redis_server.url]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", [f"{module}.py", *args, *redis, "--json", str(out / name)])
            script.main()
    return out


def test_report_judges_every_target_from_tiny_runs(tiny_results, tmp_path):
    from . import report

    text = report.main([*map(str, sorted(tiny_results.glob("*.json"))), "--out", str(tmp_path)])
    assert (tmp_path / "REPORT.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " — " in line]
    for check in report.CHECKS:
        (line,) = [row for row in rows if row.startswith(f"| {check.what}: {check.target} — {check.label} |")]
        verdict = line.rsplit("|", 2)[1].strip()
        assert verdict.startswith(("met", "MISSED")), line  # measured, whatever the figure
    for fact in ("Date:", "cores", "Python", "redis-server", "tiercache L1", "make bench"):
        assert fact in text
    pytest.importorskip("matplotlib")
    for plot in ("latency.png", "hit_ratio.png", "concurrency.png"):
        assert (tmp_path / plot).stat().st_size > 10_000


def test_report_says_not_measured_for_what_is_missing(tmp_path):
    from . import report

    text = report.main(["--out", str(tmp_path)])
    assert text.count(f"| {report.NOT_MEASURED} |") == len(report.CHECKS) + len(report.OTHER_CHECKS)
    assert f"{len(report.CHECKS)} rows: 0 met, 0 MISSED, {len(report.CHECKS)} not measured." in text


def test_report_checks_its_targets_against_benchmarks_md(tmp_path):
    from . import report

    first, second = report.CHECKS[0], report.CHECKS[-1]
    targets = tmp_path / "BENCHMARKS.md"
    targets.write_text(
        "# Performance targets\n\n## Targets\n\n| what | target |\n|---|---|\n"
        f"| {first.what} | {first.target} |\n"
        f"| {second.what} | a raised target |\n"
        "| a new target | <= 1.0x something |\n\n## How\n- | not | a row |\n"
    )
    text = report.main(["--out", str(tmp_path), "--targets", str(targets)])
    assert f'The target of "{second.what}" in {targets} reads "a raised target"' in text
    assert "| a new target: <= 1.0x something | not measured (benchmarks/report.py does not know this target) |" in text


def test_semantic_script_measures_every_figure(redis_server):
    from . import semantic

    figures = semantic.bench_size(redis_server.url, count=50, dim=16, rounds=5)
    for name in ("warm_lookup_us", "first_lookup_ms", "exact_search_us", "set_us", "l1_bytes_per_entry"):
        assert figures[name] > 0, name  # bench_size asserts every lookup found its own answer
