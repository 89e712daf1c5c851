"""What Prometheus metrics cost: on the L1-hit path, and at scrape time.

    make bench   (pytest benchmarks --benchmark-only --benchmark-group-by=group)

Groups (targets in shared/BENCHMARKS.md and issue 5):
  metrics-l1-hit   TieredCache.get on an L1 hit, the same cache with and without its
                   CacheCollector registered                                 <= 1.05x
  scrape-1m        generate_latest() of a registry holding the CacheCollector of a cache
                   with 1M L1 entries, vs generate_latest() of the same families built
                   beforehand (prometheus_client's own work)          difference < 1 ms
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tiercache import TieredCache
from tiercache.metrics import CacheCollector

from .conftest import CPU_TIMER, OPS, loop_of

SCRAPE_ENTRIES = 1_000_000


@CPU_TIMER
@pytest.mark.parametrize("name", ["floor", "TieredCache.get", "TieredCache.get, collector registered"])
def test_l1_hit_with_and_without_collector(benchmark, tiered, name):
    benchmark.group = "metrics-l1-hit"
    benchmark.extra_info["ops"] = OPS
    tiered.get("absent")  # traffic on the slow paths, so the collector has more than zeros to read
    tiered.get_or_load("loaded", lambda key: 1)
    registry = CollectorRegistry()
    collector = CacheCollector(tiered, registry=registry) if name.endswith("registered") else None
    try:
        benchmark(loop_of(None if name == "floor" else tiered.get))
        if collector is not None:  # registered and live: it reads the hits just counted
            assert (
                registry.get_sample_value(
                    "tiercache_requests_total", {"cache": tiered.name, "tier": "l1", "result": "hit"}
                )
                >= OPS
            )
    finally:
        if collector is not None:
            collector.unregister()


@pytest.fixture(scope="module")
def big(redis_server):
    """A cache whose L1 holds 1M entries (put straight into L1: Redis is not what is measured)."""
    cache = TieredCache.from_url(redis_server.url, name="bench-scrape", l1_maxsize=SCRAPE_ENTRIES, invalidation=None)
    cache.l1.set_many({f"k{i}": i for i in range(SCRAPE_ENTRIES)})
    cache.get("absent")
    cache.get_or_load("loaded", lambda key: 1)
    yield cache
    cache.close()


class _Prebuilt:
    """A collector handing out families built beforehand: what is left is prometheus_client's."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


@CPU_TIMER
@pytest.mark.parametrize("name", ["prometheus_client alone", "with CacheCollector", "CacheCollector.collect"])
def test_scrape_of_a_1m_entry_cache(benchmark, big, name):
    benchmark.group = "scrape-1m"
    benchmark.extra_info["ops"] = 1
    collector = CacheCollector(big, registry=None)
    assert len(big.l1) == SCRAPE_ENTRIES
    registry = CollectorRegistry()
    if name == "CacheCollector.collect":
        benchmark(collector.collect)
        return
    registry.register(collector if name == "with CacheCollector" else _Prebuilt(collector.collect()))
    text = benchmark(generate_latest, registry)
    assert f'tiercache_l1_entries{{cache="{big.name}"}} 1e+06'.encode() in text
