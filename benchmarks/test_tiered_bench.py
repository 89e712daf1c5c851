"""TieredCache and AsyncTieredCache against their floors and peers, in the same run.

    make bench   (pytest benchmarks --benchmark-only --benchmark-group-by=group)

Groups (targets in shared/BENCHMARKS.md):
  tiered-l1-hit      TieredCache.get on an L1 hit vs dict.get            <= 2.5x
  async-l1-hit       AsyncTieredCache.get on an L1 hit vs cashews         >= 10x faster
                     (client_side=True, its local hit)
  l2-hit             TieredCache.get served by Redis vs raw GET + unpackb <= 1.15x
  l2-get-many-100    get_many(100) served by Redis vs raw MGET + unpack    <= 1.2x
"""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import redis

from tiercache import AsyncTieredCache, TieredCache

from .conftest import CPU_TIMER, KEYS, OPS, VALUE, loop_of

# cashews (the async peer) warns about redis-py deprecations and leaks connections at
# close; its warnings are not ours to fail on.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning",
    "ignore::ResourceWarning",
    "ignore::pytest.PytestUnraisableExceptionWarning",
)

ASYNC_OPS = 2_000
L2_OPS = 200


@pytest.fixture(scope="module")
def raw(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    packed = msgpack.packb(VALUE)
    client.mset({f"raw:{key}": packed for key in KEYS})
    yield client
    client.close()


@CPU_TIMER
@pytest.mark.parametrize("name", ["floor", "dict.get", "TieredCache.get", "its LocalCache.get"])
def test_tiered_l1_hit(benchmark, tiered, name):
    benchmark.group = "tiered-l1-hit"
    benchmark.extra_info["ops"] = OPS
    lookups = {
        "dict.get": dict.fromkeys(KEYS, VALUE).get,
        "TieredCache.get": tiered.get,
        "its LocalCache.get": tiered.l1.get,
    }
    lookup = lookups.get(name)
    benchmark(loop_of(lookup))
    if lookup is not None:
        assert lookup(KEYS[-1]) == VALUE


@CPU_TIMER
@pytest.mark.parametrize("name", ["floor", "AsyncTieredCache.get", "cashews client_side"])
def test_async_l1_hit(benchmark, redis_server, name):
    benchmark.group = "async-l1-hit"
    benchmark.extra_info["ops"] = ASYNC_OPS
    keys = KEYS[:ASYNC_OPS]
    loop = asyncio.new_event_loop()
    if name == "AsyncTieredCache.get":
        cache = AsyncTieredCache.from_url(redis_server.url, name="abench", l1_ttl=3600, default_ttl=3600)
        assert loop.run_until_complete(cache.wait_ready())
        loop.run_until_complete(cache.set_many(dict.fromkeys(keys, VALUE)))
        get, close = cache.get, cache.close
    elif name == "cashews client_side":
        cashews = pytest.importorskip("cashews")
        cache = cashews.Cache()
        cache.setup(redis_server.url, client_side=True)

        async def fill():
            for key in keys:
                await cache.set(key, VALUE, expire=3600)
            for key in keys:  # first read of each key fills cashews' local copy
                await cache.get(key)

        loop.run_until_complete(fill())
        get, close = cache.get, cache.close
    else:
        get = close = None

    async def run():
        if get is None:
            for key in keys:
                pass
        else:
            for key in keys:
                await get(key)

    try:
        benchmark(lambda: loop.run_until_complete(run()))
        if get is not None:
            assert loop.run_until_complete(get(keys[0])) == VALUE
    finally:
        if close is not None:
            loop.run_until_complete(close())
        loop.close()


@pytest.mark.parametrize("name", ["raw GET + msgpack.unpackb", "TieredCache.get (L2 hit)"])
def test_l2_hit(benchmark, tiered, raw, redis_server, name):
    benchmark.group = "l2-hit"
    benchmark.extra_info["ops"] = L2_OPS
    keys = KEYS[:L2_OPS]
    if name.startswith("raw"):
        raw_keys = [f"raw:{key}" for key in keys]
        get, unpack = raw.get, msgpack.unpackb

        def run():
            for key in raw_keys:
                unpack(get(key))

    else:
        # An L1 of one entry, read in a cycle: every get misses L1 and is served by Redis
        # (decode, header, the guarded fill into L1 all included).
        cache = TieredCache.from_url(redis_server.url, name="bench", l1_maxsize=1)
        cache.wait_ready()
        get = cache.get

        def run():
            for key in keys:
                get(key)

    benchmark(run)
    assert run() is None
    if not name.startswith("raw"):
        assert cache.stats()["l2_hits"] >= len(keys)  # really served by Redis
        cache.close()


@pytest.mark.parametrize("name", ["raw MGET + msgpack.unpackb", "TieredCache.get_many"])
def test_l2_get_many_100(benchmark, tiered, raw, name):
    benchmark.group = "l2-get-many-100"
    benchmark.extra_info["ops"] = 100
    keys = KEYS[:100]
    if name.startswith("raw"):
        raw_keys = [f"raw:{key}" for key in keys]
        unpack = msgpack.unpackb

        def run():
            return {key: unpack(blob) for key, blob in zip(keys, raw.mget(raw_keys))}

        setup = None
    else:
        run = lambda: tiered.get_many(keys)  # noqa: E731
        setup = tiered.l1.clear  # every round starts with L1 empty: all 100 come from Redis
    result = benchmark.pedantic(run, setup=setup, rounds=300, warmup_rounds=10) if setup else benchmark(run)
    assert result == dict.fromkeys(keys, VALUE)
