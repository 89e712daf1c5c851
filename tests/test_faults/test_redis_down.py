"""Redis never started, killed mid-run, paused past the timeout: reads degrade without
raising, writes report failure, the breaker stops the waiting, and the cache recovers."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import wait_until
from tiercache import AsyncTieredCache, CacheUnavailable, TieredCache
from tiercache.testing import free_port

FAST_FAIL = {
    "redis_options": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
    "breaker_threshold": 2,
    "breaker_reset": 0.2,
}


async def await_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


def dead_url():
    return f"redis://127.0.0.1:{free_port()}/0"


# -- sync ------------------------------------------------------------------------------


def test_redis_never_started():
    with TieredCache.from_url(dead_url(), name="down", **FAST_FAIL) as cache:
        assert not cache.l1_enabled  # no confirmed subscription: L1 neither serves nor stores
        assert cache.get("k", "default") == "default"
        assert cache.get_many(["a", "b"]) == {}
        assert cache.exists("k") is False and cache.ttl("k") is None
        assert cache.get_or_load("k", lambda key: "loaded") == "loaded"
        assert cache.get("k", "default") == "default" and len(cache.l1) == 0
        assert cache.set("x", 1) is False and "x" not in cache.l1
        assert cache.delete("k") is False and "k" not in cache.l1  # the local copy is dropped
        with pytest.raises(CacheUnavailable):
            cache.incr("n")
        stats = cache.stats()
        assert stats["l2_errors"] >= 2 and stats["short_circuits"] >= 1 and stats["write_failures"] == 2
        assert stats["breaker"] == "open"


def test_strict_writes_raise():
    with TieredCache.from_url(dead_url(), name="down", strict=True, **FAST_FAIL) as cache:
        with pytest.raises(CacheUnavailable, match="set did not reach Redis"):
            cache.set("x", 1)
        with pytest.raises(CacheUnavailable):
            cache.delete("x")
        assert cache.get("x", "still no exception") == "still no exception"


def test_redis_killed_mid_run_then_restarted(own_redis):
    with TieredCache.from_url(own_redis.url, name="crash", **FAST_FAIL) as cache:
        assert cache.wait_ready()
        cache.set("in-l1", "local")
        assert "in-l1" in cache.l1
        own_redis.kill()
        assert wait_until(lambda: not cache.l1_enabled)  # the subscriber saw the connection go
        assert len(cache.l1) == 0  # what L1 held may miss invalidations: it is emptied
        assert cache.get("in-l1", "default") == "default"
        assert cache.set("k", 1) is False
        own_redis.start()
        assert wait_until(lambda: cache.set("k", 2))
        assert cache.wait_ready()
        assert cache.get("k") == 2 and cache.stats()["breaker"] == "closed"
        assert cache.stats()["reconnects"] >= 1


def test_without_invalidation_l1_answers_through_an_outage(own_redis):
    with TieredCache.from_url(own_redis.url, name="crash", invalidation=None, **FAST_FAIL) as cache:
        cache.set("in-l1", "local")
        own_redis.kill()
        assert cache.get("in-l1") == "local"  # bounded by l1_ttl, which is the bargain
        assert cache.get_or_load("other", lambda key: "loaded") == "loaded"
        assert cache.get("other") == "loaded"  # L1 kept it, sparing the loader


def test_redis_paused_past_the_timeout(own_redis):
    with TieredCache.from_url(own_redis.url, name="pause", **FAST_FAIL) as cache:
        cache.set("k", "v")
        cache.l1.clear()
        own_redis.pause()
        try:
            assert cache.get("k", "default") == "default"
            assert cache.get("k", "default") == "default"
            errors = cache.stats()["l2_errors"]
            assert cache.get("k", "default") == "default"  # breaker open: no new timeout
            assert cache.stats()["l2_errors"] == errors and cache.stats()["short_circuits"] >= 1
        finally:
            own_redis.resume()
        assert wait_until(lambda: cache.get("k") == "v")


# -- asyncio ---------------------------------------------------------------------------------


async def test_async_redis_never_started():
    async with AsyncTieredCache.from_url(dead_url(), name="down", **FAST_FAIL) as cache:
        assert await cache.get("k", "default") == "default"
        assert await cache.get_many(["a"]) == {}
        assert await cache.get_or_load("k", lambda key: "loaded") == "loaded"
        assert await cache.set("x", 1) is False
        with pytest.raises(CacheUnavailable):
            await cache.incr("n")
        assert cache.stats()["breaker"] == "open"


async def test_async_redis_killed_then_restarted(own_redis):
    async with AsyncTieredCache.from_url(own_redis.url, name="crash", **FAST_FAIL) as cache:
        await cache.set("k", "v")
        cache.l1.clear()
        own_redis.kill()
        assert await cache.get("k", "default") == "default"
        assert await cache.set("k", 1) is False
        own_redis.start()
        assert await await_until(lambda: cache.set("k", 2))
        assert await cache.get("k") == 2


async def test_async_redis_paused_past_the_timeout(own_redis):
    async with AsyncTieredCache.from_url(own_redis.url, name="pause", **FAST_FAIL) as cache:
        await cache.set("k", "v")
        cache.l1.clear()
        own_redis.pause()
        try:
            for _ in range(3):
                assert await cache.get("k", "default") == "default"
            assert cache.stats()["short_circuits"] >= 1
        finally:
            own_redis.resume()

        async def recovered():
            return await cache.get("k") == "v"

        assert await await_until(recovered)


# -- write-through that Redis missed: the key is repaired --------------------------------------


def test_a_write_through_redis_missed_is_repaired_once_it_answers(own_redis):
    database = {"k": "v1"}

    def write_row(key, value):
        database[key] = value

    with (
        TieredCache.from_url(own_redis.url, name="wt", writer=write_row, **FAST_FAIL) as writer,
        TieredCache.from_url(own_redis.url, name="wt", **FAST_FAIL) as other,
    ):
        assert writer.wait_ready() and other.wait_ready()
        writer.set("k", "v1")
        assert wait_until(lambda: other.get("k") == "v1" and "k" in other.l1)  # after the write's message
        own_redis.pause()
        assert writer.set("k", "v2") is False  # the database has v2, Redis still v1
        assert database["k"] == "v2" and writer.stats()["repairs_pending"] == 1
        own_redis.resume()
        assert wait_until(lambda: writer.l1_enabled and other.l1_enabled)
        assert writer.get("k") is None  # its first operation repaired the key: gone from Redis
        stats = writer.stats()
        assert (stats["repairs_pending"], stats["repairs_done"]) == (0, 1)
        assert wait_until(lambda: other.get("k") is None)  # and from the other process's L1
        assert writer.get_or_load("k", database.get) == "v2"


async def test_a_cancelled_async_write_through_is_repaired(own_redis):
    database = {}

    async def write_row(key, value):
        database[key] = value

    async with AsyncTieredCache.from_url(own_redis.url, name="wt", writer=write_row, **FAST_FAIL) as cache:
        assert await cache.wait_ready()
        await cache.set("k", "v1")
        own_redis.pause()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cache.set("k", "v2"), 0.05)  # cancelled on the wire
        own_redis.resume()
        assert database["k"] == "v2" and "k" not in cache.l1

        async def repaired():
            return not await cache.exists("k")  # an operation, which repairs first

        assert await await_until(repaired)
        assert cache.stats()["repairs_done"] == 1


# -- more callers than connections: they queue, and a full pool is not an outage ----------------


async def test_an_async_burst_past_the_pool_queues_instead_of_failing(redis_server, cache_name):
    options = {"redis_options": {"max_connections": 5}}  # one of them is the subscriber's
    async with AsyncTieredCache.from_url(redis_server.url, name=cache_name, **options) as cache:
        assert await cache.wait_ready()
        await cache.set_many({f"k{i}": i for i in range(500)})
        cache.l1.clear()
        loads = []

        async def loader(key):
            loads.append(key)
            return -1

        results = await asyncio.gather(*(cache.get_or_load(f"k{i}", loader) for i in range(500)))
        stats = cache.stats()
        assert results == list(range(500)) and loads == []
        assert (stats["breaker"], stats["l2_errors"], stats["pool_exhausted"]) == ("closed", 0, 0)


def test_no_free_connection_is_counted_apart_and_leaves_the_breaker_closed(redis_server, cache_name):
    options = {"redis_options": {"max_connections": 2, "timeout": 0.05}, "breaker_threshold": 1}
    with TieredCache.from_url(redis_server.url, name=cache_name, **options) as cache:
        assert cache.wait_ready()  # the subscriber holds one connection
        cache.set("k", "v")
        cache.l1.clear()
        held = cache.redis.connection_pool.get_connection()  # and someone else the other
        try:
            assert cache.get("k", "busy") == "busy"
            assert cache.set("k", "w") is False
        finally:
            cache.redis.connection_pool.release(held)
        stats = cache.stats()
        assert (stats["breaker"], stats["l2_errors"], stats["pool_exhausted"]) == ("closed", 0, 2)
        assert cache.get("k") == "v"


async def test_a_users_client_with_a_small_plain_pool_is_not_an_outage(redis_server, cache_name):
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_server.url, max_connections=3)
    async with AsyncTieredCache(client, name=cache_name, invalidation=None) as cache:
        await cache.set_many({f"k{i}": i for i in range(100)})
        cache.l1.clear()
        await asyncio.gather(*(cache.get(f"k{i}") for i in range(100)), return_exceptions=True)
        stats = cache.stats()
        assert stats["pool_exhausted"] > 0  # redis-py refused connections past its pool...
        assert (stats["breaker"], stats["l2_errors"]) == ("closed", 0)  # ...which is not Redis failing
    await client.aclose()
