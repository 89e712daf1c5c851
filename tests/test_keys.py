"""keys(match): a namespace's own keys, listed with SCAN, sync and async."""

from __future__ import annotations

import pytest

from tiercache import AsyncTieredCache
from tiercache.errors import CacheUnavailable


def test_keys_lists_this_namespace_only(cache):
    cache.set_many({f"user:{i}": i for i in range(25)})
    cache.set("order:1", 1)
    cache.set(b"\x00raw", 1)
    cache.set("@odd", 1)
    tenant = cache.namespace("t1")
    tenant.set("user:1", "tenant")
    tenant.namespace("deep").set("user:2", "deeper")
    cache.get_or_load("leased", lambda key: 1)  # its lease is gone by now; a lease key would be skipped
    assert sorted(cache.keys("user:*"), key=str) == sorted((f"user:{i}" for i in range(25)), key=str)
    everything = set(cache.keys())
    assert {"order:1", b"\x00raw", "@odd", "leased"} <= everything
    assert "user:1" in everything and len(everything) == 25 + 4
    assert list(tenant.keys()) == ["user:1"]  # not the nested namespace's
    assert list(tenant.namespace("deep").keys("user:*")) == ["user:2"]


def test_keys_walks_many_steps(cache):
    cache.set_many({f"k{i}": i for i in range(300)})
    assert len(set(cache.keys(count=7))) == 300


def test_keys_checks_its_arguments_when_called(cache):
    with pytest.raises(TypeError, match="match must be a str"):
        cache.keys(b"*")
    with pytest.raises(ValueError, match="count must be a positive int"):
        cache.keys(count=0)


def test_keys_raises_when_redis_does_not_answer(make_cache, own_redis):
    cache = make_cache(url=own_redis.url)
    cache.set("a", 1)
    own_redis.kill()
    with pytest.raises(CacheUnavailable):
        list(cache.keys())


async def test_async_keys(redis_server, cache_name):
    async with AsyncTieredCache.from_url(redis_server.url, name=cache_name) as cache:
        await cache.set_many({f"user:{i}": i for i in range(30)})
        await cache.namespace("n").set("user:x", 1)
        found = [key async for key in cache.keys("user:*", count=4)]
        assert sorted(found) == sorted(f"user:{i}" for i in range(30))
        assert [key async for key in cache.namespace("n").keys("*")] == ["user:x"]
        with pytest.raises(TypeError):
            cache.keys(1)
