"""backend "memory" and enabled false (tiercache/memory.py): the same API with no Redis."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tiercache import AsyncTieredCache, ConfigError, RedisReplyError, TieredCache
from tiercache.core import tags


def closed_port_url() -> str:
    """A Redis URL nothing listens on: a memory cache must never try it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def memory_cache():
    cache = TieredCache.from_config({"name": "mem", "backend": "memory", "url": closed_port_url()})
    yield cache
    cache.close()


def test_every_operation_works_with_no_redis(memory_cache):
    cache = memory_cache
    assert cache.redis is None and cache.wait_ready()
    assert cache.set("user:1", {"name": "Ada"}, ttl=60, tags=["users"])
    cache.l1.clear()  # from the store, as from Redis: decoded afresh
    assert cache.get("user:1") == {"name": "Ada"} and cache.exists("user:1")
    assert 59 < cache.ttl("user:1") <= 60 and cache.ttl("absent") is None
    assert cache.expire("user:1", float("inf")) and cache.ttl("user:1") == float("inf")
    assert cache.set_many({"user:2": 2}, tags=["users"]) and cache.set_many({"order:1": "o"})
    assert cache.get_many(["user:1", "user:2", "absent"]) == {"user:1": {"name": "Ada"}, "user:2": 2}
    assert (cache.incr("n", 5), cache.incr("n"), cache.get("n")) == (5, 6, 6)
    assert cache.set_field("s", "step", 1) and cache.incr_field("s", "count", 2) == 2
    assert cache.delete_field("s", "step") and cache.get("s") == {"count": 2}
    assert [cache.append("log", i, max_len=2) for i in range(3)] == [1, 2, 2] and cache.get("log") == [1, 2]
    assert sorted(cache.keys()) == ["log", "n", "order:1", "s", "user:1", "user:2"]
    assert cache.invalidate_tags(["users"]) == 2 and cache.get("user:2") is None
    assert cache.delete_prefix("lo") == 1 and cache.delete_match("?") == 2  # n and s
    assert sorted(cache.keys()) == ["order:1"]
    tenant = cache.namespace("t1")
    tenant.set("order:1", "t1's")
    assert cache.get("order:1") == "o" and list(tenant.keys()) == ["order:1"]
    assert tenant.clear() and cache.get("order:1") == "o" and tenant.get("order:1") is None
    with pytest.raises(TypeError):
        cache.incr_field("order:1", "x")  # a str is no dict: nothing changes
    assert cache.get("order:1") == "o"
    with pytest.raises(RedisReplyError, match="not an integer"):
        cache.incr("order:1")


def test_ttls_expire_and_the_store_is_bounded_by_maxsize():
    with TieredCache.in_memory(name="bounded", l1_maxsize=10) as cache:
        cache.set("short", 1, ttl=0.05)
        for i in range(20):
            cache.set(f"k:{i}", i)
        assert len(list(cache.keys())) == 10 and cache.get("k:19") == 19
        assert cache.get("short") is None
        cache.set("short", 1, ttl=0.05)
        time.sleep(0.1)
        cache.l1.clear()
        assert cache.get("short") is None and cache.ttl("short") is None


def test_the_decorator_single_flight_and_loader_run_as_on_redis(memory_cache):
    calls = []
    gate = threading.Event()

    @memory_cache.cached(key="slow:{x}", tags=["slow"])
    def slow(x):
        calls.append(x)
        gate.wait(5)
        return x * 2

    threads = [threading.Thread(target=slow, args=(1,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [1] and slow(1) == 2  # one load for eight concurrent callers
    assert memory_cache.invalidate_tags(["slow"]) == 1 and slow(1) == 2 and calls == [1, 1]


def test_abandoned_tag_sets_are_swept(memory_cache):
    for i in range(20):
        memory_cache.set(f"k:{i}", i, ttl=0.02, tags=[f"once:{i}"])
    time.sleep(0.05)
    for _ in range(10):
        memory_cache.set("new", 1, tags=["busy"])
    assert list(memory_cache._store._tags) == [memory_cache._keys.tag_key("busy")]


def test_enabled_false_keeps_nothing_and_calls_the_loader_and_writer_every_time():
    written, loaded = [], []
    config = {"name": "off", "enabled": "false", "url": closed_port_url()}
    with TieredCache.from_config(config) as cache:
        cache._shared.writer = lambda key, value: written.append((key, value))
        assert cache.set("a", 1) and written == [("a", 1)]
        assert cache.get("a") is None and len(cache.l1) == 0

        @cache.cached(key="f:{x}")
        def f(x):
            loaded.append(x)
            return x

        assert [f(1), f(1), cache.get_or_load("b", lambda key: "b"), cache.get_or_load("b", lambda key: "c")] == [
            1,
            1,
            "b",
            "c",
        ]
        assert loaded == [1, 1] and list(cache.keys()) == [] and len(cache.l1) == 0


def test_config_and_options():
    with pytest.raises(ConfigError, match="'backend' must be one of 'redis', 'memory'"):
        TieredCache.from_config({"name": "x", "backend": "disk"})
    with pytest.raises(ConfigError, match="'enabled' must be true or false"):
        TieredCache.from_config({"name": "x", "enabled": "maybe"})
    with pytest.raises(ValueError, match="invalidation= does not apply"):
        TieredCache.in_memory(name="x", invalidation="pubsub")
    with pytest.raises(TypeError, match="enabled must be a bool"):
        TieredCache.in_memory(name="x", enabled="no")
    with pytest.raises(ValueError, match="at most l1_maxsize entries"):
        TieredCache.in_memory(name="x", l1_maxsize=0)  # it would store nothing: say so
    with TieredCache.from_config(
        {"name": "x", "backend": "memory", "early_refresh": True, "stale_if_error": 9}
    ) as kept:
        assert kept.get_or_load("k", lambda key: 1, stale_while_revalidate=5) == 1  # accepted; values just expire
        with pytest.raises(ValueError, match="early_refresh"):
            kept.get_or_load("k", str, early_refresh="soon")  # but still checked
    environ = {"TIERCACHE_NAME": "env", "TIERCACHE_BACKEND": "memory", "TIERCACHE_INVALIDATION": "pubsub"}
    with TieredCache.from_env(environ=environ) as cache:  # the bus setting does not apply: ignored
        assert cache.set("k", 1) and cache.get("k") == 1


async def test_async_memory_cache():
    cache = AsyncTieredCache.from_config({"name": "amem", "backend": "memory"})
    try:
        await cache.set("a", 1, tags=["t"])
        assert await cache.get_or_load("b", lambda key: 2, tags=["t"]) == 2
        assert sorted([key async for key in cache.keys("*")]) == ["a", "b"]
        assert await cache.incr_field("h", "n") == 1 and await cache.append("l", "x") == 1
        assert await cache.invalidate_tags(["t"]) == 2 and await cache.get("a") is None
    finally:
        await cache.close()
    async with AsyncTieredCache.in_memory(name="aoff", enabled=False) as off:
        assert await off.set("a", 1) and await off.get("a") is None


def test_invalidate_tags_batches_in_memory(memory_cache):
    count = tags.BATCH + 3
    memory_cache.set_many({f"k:{i}": i for i in range(count)}, tags=["many"])
    assert memory_cache.invalidate_tags(["many"]) == count and list(memory_cache.keys()) == []


def test_incr_refuses_what_redis_refuses(memory_cache, make_cache):
    for cache in (memory_cache, make_cache()):
        cache.set("n", -1)
        for amount in (2**63, -(2**63) - 1):
            with pytest.raises(RedisReplyError, match="not an integer or out of range"):
                cache.incr("n", amount)
        assert cache.get("n") == -1
