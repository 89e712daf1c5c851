"""Metrics of AsyncTieredCache: the same figures as the sync driver, counted on the same paths."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from ..conftest import FakeTimer


def value(registry, name, cache, **labels):
    return registry.get_sample_value(name, {"cache": cache, **labels})


async def test_known_sequence_gives_exact_samples(make_acache):
    registry = CollectorRegistry()
    cache = await make_acache()
    clock = FakeTimer(start=0.0)
    cache._shared.clock = clock
    cache.register_metrics(registry)

    async def loader(key):
        clock.advance(0.3)
        await asyncio.sleep(0)
        return key * 2

    await cache.set("a", 1)
    assert await cache.get("a") == 1  # L1 hit
    assert await cache.get("b") is None  # L1 miss, Redis miss
    # ten tasks, one load
    results = await asyncio.gather(*(cache.get_or_load("c", loader) for _ in range(10)))
    assert results == ["cc"] * 10
    assert await cache.get_many(["a", "c", "d"]) == {"a": 1, "c": "cc"}  # two L1 hits, one miss, MGET

    name = cache.name
    assert value(registry, "tiercache_requests_total", name, tier="l1", result="hit") == 3
    # b, ten lookups of c before the load landed (the flight's own read asks Redis once), d
    assert value(registry, "tiercache_requests_total", name, tier="l1", result="miss") == 12
    assert value(registry, "tiercache_requests_total", name, tier="l2", result="miss") == 3
    assert value(registry, "tiercache_loads_total", name, result="success") == 1
    assert value(registry, "tiercache_load_duration_seconds_sum", name) == pytest.approx(0.3)
    assert value(registry, "tiercache_load_duration_seconds_bucket", name, le="0.25") == 0
    assert value(registry, "tiercache_load_duration_seconds_bucket", name, le="0.5") == 1
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="get") == 1  # b
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="get_or_lease") == 1  # c, once
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="fill_leased") == 1
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="set") == 1  # a
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="mget") == 1
    assert value(registry, "tiercache_invalidations_sent_total", name) == 1
    assert value(registry, "tiercache_subscriber_connected", name) == 1
    assert value(registry, "tiercache_l1_entries", name) == 2
    stats = cache.stats()
    assert stats["l1_hit_ratio"] == pytest.approx(3 / 15)

    await cache.close()  # unregisters
    assert value(registry, "tiercache_l1_entries", name) is None
