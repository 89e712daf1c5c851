"""AsyncTieredCache against a real redis-server: the sync suite's cases, awaited."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import math

import pytest

from tiercache import DELETED, AsyncTieredCache, CacheClosed, CacheError, RedisReplyError, TieredCache
from tiercache.core import plans
from tiercache.local import NO_EXTENSIONS

from ..conftest import L2_KINDS


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


async def test_set_then_get_from_l1_then_from_redis(acache, raw_redis):
    assert await acache.set("user:1", {"name": "Ada", "tags": ("a", "b")}) is True
    assert await acache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}
    assert acache.stats()["l1_hits"] == 1
    assert raw_redis.exists(acache.redis_key("user:1"))
    acache.l1.clear()
    assert await acache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}
    assert await acache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}
    stats = acache.stats()
    assert (stats["l2_hits"], stats["l1_hits"]) == (1, 2)
    assert await acache.get("absent", "fallback") == "fallback"


@pytest.mark.skipif(NO_EXTENSIONS, reason="the compiled fast path is switched off")
async def test_l1_hit_goes_through_the_compiled_lookup(acache):
    from tiercache._local_c import TieredFront

    assert type(acache)._l1_get is TieredFront._l1_get  # one C call finds the L1 value
    await acache.set("k", 1)
    assert await acache.get("k") == 1
    assert acache.stats()["l1_hits"] == 1 and acache.stats()["l2_hits"] == 0


async def test_sync_and_async_caches_share_redis(acache, l2_url):
    with TieredCache.from_url(l2_url, name=acache.name) as sync_cache:
        sync_cache.set("k", {"from": "sync"})
        assert await acache.get("k") == {"from": "sync"}
        await acache.set("k2", [1])
        assert sync_cache.get("k2") == [1]


async def test_methods(acache, make_acache):
    other = await make_acache()
    await acache.set_many({"a": 1, "b": "two"})
    assert await other.get_many(["a", "b", "zz"]) == {"a": 1, "b": "two"}
    assert await acache.exists("a") and not await acache.exists("zz")
    assert await acache.delete("a") is True and await acache.delete("a") is False
    assert await acache.delete_many(["b", "zz"]) == 1
    await acache.set("t", 1, ttl=100)
    assert 99 < await acache.ttl("t") <= 100
    assert await acache.expire("t", math.inf) is True and await acache.ttl("t") == math.inf
    assert await acache.incr("n", 5) == 5 and await acache.incr("n") == 6
    assert await other.get("n") == 6
    await acache.set("text", "x")
    with pytest.raises(RedisReplyError, match="cannot increment"):
        await acache.incr("text")


async def test_namespaces_and_clear(acache):
    tenant = acache.namespace("t1")
    await acache.set("k", "root")
    await tenant.set("k", "tenant")
    assert (await acache.get("k"), await tenant.get("k")) == ("root", "tenant")
    assert await tenant.clear() is True
    assert await tenant.get("k") is None and await acache.get("k") == "root"


async def test_get_or_load_with_async_and_sync_loaders(acache, make_acache):
    async def async_loader(key):
        await asyncio.sleep(0)
        return {"id": key}

    assert await acache.get_or_load("a", async_loader) == {"id": "a"}
    assert await acache.get_or_load("s", lambda key: key.upper()) == "S"
    assert await (await make_acache()).get("a") == {"id": "a"}
    assert acache.stats()["loads"] == 2


async def test_single_flight_100_tasks_one_loader_call(acache):
    calls = []
    release = asyncio.Event()

    async def slow_loader(key):
        calls.append(key)
        await release.wait()
        return "value"

    tasks = [asyncio.ensure_future(acache.get_or_load("cold", slow_loader)) for _ in range(100)]
    while not calls:
        await asyncio.sleep(0.001)
    for _ in range(10):
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*tasks) == ["value"] * 100
    assert calls == ["cold"]


async def test_loader_exception_reaches_every_task_and_nothing_is_cached(acache):
    release = asyncio.Event()

    async def failing(key):
        await release.wait()
        raise RuntimeError("db down")

    tasks = [asyncio.ensure_future(acache.get_or_load("k", failing)) for _ in range(20)]
    await asyncio.sleep(0.01)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [str(r) for r in results] == ["db down"] * 20
    assert not await acache.exists("k") and acache.stats()["load_errors"] == 1


async def test_cancelling_one_waiter_does_not_cancel_the_load(acache):
    release = asyncio.Event()

    async def loader(key):
        await release.wait()
        return "loaded"

    first = asyncio.ensure_future(acache.get_or_load("k", loader))
    second = asyncio.ensure_future(acache.get_or_load("k", loader))
    await asyncio.sleep(0.01)
    first.cancel()
    release.set()
    assert await second == "loaded"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_writer_order_and_failure(make_acache, raw_redis):
    seen = []

    async def writer(key, value):
        if value == "bad":
            raise ValueError("rejected")
        seen.append((key, value, raw_redis.exists(cache.redis_key(key))))

    cache = await make_acache(writer=writer)
    await cache.set("k", "v1")
    with pytest.raises(ValueError, match="rejected"):
        await cache.set("k", "bad")
    await cache.delete("k")
    assert seen == [("k", "v1", 0), ("k", DELETED, 1)]


async def test_read_overtaken_by_a_write_does_not_fill_l1(acache, raw_redis):
    await acache.set("k", "old")
    acache.l1.clear()
    plan = plans.get(acache._scope, "k", None)
    request = next(plan)
    old_bytes = raw_redis.get(request.key)
    await acache.set("k", "new")
    acache.l1.clear()
    with pytest.raises(StopIteration):
        plan.send(old_bytes)
    assert "k" not in acache.l1 and await acache.get("k") == "new"


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_model_and_bad_input(acache, raw_redis):
    await acache.set("p", Point(1, 2))
    assert await acache.get("p", model=Point) == Point(1, 2)
    with pytest.raises(TypeError, match="cache keys must be str or bytes"):
        await acache.get(5)
    with pytest.raises(TypeError, match="cannot serialize"):
        await acache.set("k", object())
    assert not await acache.exists("k")
    raw_redis.set(acache.redis_key("junk"), b"\x11\x00garbage")
    assert await acache.get("junk", "d") == "d"
    assert acache.stats()["decode_errors"] == 1


async def test_a_closed_async_cache_serves_nothing_and_stays_closed(make_acache, raw_redis):
    cache = await make_acache()
    await cache.set("k", "v")
    assert "k" in cache.l1
    await cache.close()
    assert not cache.l1_enabled and len(cache.l1) == 0
    with pytest.raises(CacheClosed, match="is closed"):
        await cache.get("k")
    with pytest.raises(CacheClosed):
        await cache.wait_ready()
    assert cache._parts.subscriber.task is None  # nothing restarted it
    subscribers = [c for c in raw_redis.client_list() if c.get("sub") not in (None, "0")]
    assert not any(c["name"] == cache.name for c in subscribers)


async def test_close_ends_a_subscriber_whose_cancellation_a_library_swallowed(make_acache):
    # Python 3.11's wait_for (redis-py writes to the socket through it) returns its inner
    # call's result when that lands together with a cancellation, and the cancellation is
    # lost. The subscriber must end anyway: seen as a subscriber still running after close().
    cache = await make_acache()
    assert await cache.wait_ready(10)
    subscriber = cache._parts.subscriber
    task, pubsub = subscriber.task, subscriber._pubsub
    real_get_message, calls, swallowed = pubsub.get_message, [], []

    async def get_message_that_loses_a_cancellation(*args, **kwargs):
        calls.append(1)
        try:
            return await real_get_message(*args, **kwargs)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed.append(task.cancelling())
            return None

    pubsub.get_message = get_message_that_loses_a_cancellation
    while not calls:  # the subscriber is waiting in the patched call
        await asyncio.sleep(0.01)
    await cache.close()
    assert swallowed == [1]  # the close's cancellation was lost, as in the race
    assert task.done()  # and the task ended all the same, closing its connection
    assert subscriber._pubsub is None


def test_a_second_event_loop_is_refused_and_the_first_loops_l1_is_shut(redis_server, cache_name):
    cache = AsyncTieredCache.from_url(redis_server.url, name=cache_name)

    async def first(cache):
        assert await cache.wait_ready(10)
        await cache.set("k", "v1")
        assert await cache.get("k") == "v1" and "k" in cache.l1
        await cache.redis.connection_pool.disconnect()  # this test's own tidiness, not the cache's

    async def second(cache):
        with pytest.raises(CacheError, match="event loop"):
            await cache.get("k")  # no L1 copy without the subscriber that died with loop 1
        with pytest.raises(CacheError, match="event loop"):
            await cache.wait_ready()

    asyncio.run(first(cache))
    assert not cache.l1_enabled and len(cache.l1) == 0  # the subscriber's end shut L1
    asyncio.run(second(cache))
    with pytest.warns(ResourceWarning, match="unclosed AsyncTieredCache"):
        del cache  # it cannot be closed from here: dropping it says so
        gc.collect()


async def test_an_async_loader_that_asks_for_its_own_key_raises_instead_of_hanging(acache):
    async def loader(key):
        return await acache.get_or_load(key, loader)

    with pytest.raises(CacheError, match="asked the cache for 'k' itself"):
        await asyncio.wait_for(acache.get_or_load("k", loader), 5)
    results = await asyncio.gather(*(acache.get_or_load("j", lambda key: "shared") for _ in range(3)))
    assert results == ["shared"] * 3  # other tasks waiting on a flight are not recursion
