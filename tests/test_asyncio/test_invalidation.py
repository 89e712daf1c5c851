"""The asyncio subscriber: the sync invalidation suite's cases, awaited."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from tiercache import AsyncTieredCache, TieredCache
from tiercache.core import plans

BUS = {"heartbeat": 0.1, "max_silence": 0.4, "gap_grace": 0.2}


async def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(0.005)
    return False


async def settled(writer, reader):
    return await eventually(lambda: reader.stats()["invalidations_received"] >= writer.stats()["invalidations_sent"])


async def test_writes_elsewhere_drop_the_l1_copy(make_acache):
    writer, reader = await make_acache(**BUS), await make_acache(**BUS)
    await writer.set("k", "v1")
    assert await settled(writer, reader)
    assert await reader.get("k") == "v1" and "k" in reader.l1
    await writer.set("k", "v2")
    assert await eventually(lambda: "k" not in reader.l1)
    assert await reader.get("k") == "v2"
    await writer.delete("k")
    assert await eventually(lambda: "k" not in reader.l1)
    await writer.clear()
    assert await eventually(lambda: len(reader.l1) == 0)
    assert writer.stats()["invalidations_received"] == 0


async def test_sync_and_async_caches_invalidate_each_other(make_acache, redis_server):
    reader = await make_acache(**BUS)
    with TieredCache.from_url(redis_server.url, name=reader.name, **BUS) as writer:
        assert writer.wait_ready(10)
        writer.set("k", "sync")
        assert await settled(writer, reader)
        assert await reader.get("k") == "sync"
        writer.set("k", "sync2")
        assert await eventually(lambda: "k" not in reader.l1)
        writer.get("k")
        assert await reader.set("k", "async") is True
        assert await eventually(lambda: writer.l1.peek("k") in (None, "async"))
        assert writer.get("k") == "async"


async def test_race_read_reply_delayed_past_an_invalidation(make_acache, raw_redis):
    writer, reader = await make_acache(**BUS), await make_acache(**BUS)
    for attempt in range(20):
        key = f"race{attempt}"
        await writer.set(key, "old")
        plan = plans.get(reader._scope, key, None)
        request = next(plan)
        old_reply = raw_redis.get(request.key)
        received = reader.stats()["invalidations_received"]
        await writer.set(key, "new")
        assert await eventually(lambda: reader.stats()["invalidations_received"] > received)
        with pytest.raises(StopIteration):
            plan.send(old_reply)
        assert key not in reader.l1
        assert await reader.get(key) == "new"


@pytest.fixture
async def own_pair(own_redis):
    caches = [AsyncTieredCache.from_url(own_redis.url, name="faults", **BUS) for _ in range(2)]
    for cache in caches:
        assert await cache.wait_ready(10)
    yield caches
    for cache in caches:
        await cache.close()


async def test_subscriber_connection_killed(own_redis, own_pair):
    writer, reader = own_pair
    with redis.Redis.from_url(own_redis.url) as client:
        await writer.set("k", "v1")
        assert await reader.get("k") == "v1"
        for entry in client.client_list():
            if int(entry.get("sub", 0)) > 0:
                client.client_kill_filter(_id=entry["id"])
        assert await eventually(lambda: reader.stats()["reconnects"] >= 1)
        await writer.set("k", "v2")
        assert await reader.get("k") == "v2"
        assert await reader.wait_ready(10)


async def test_redis_paused_past_max_silence_shuts_l1(own_redis, own_pair):
    writer, reader = own_pair
    await writer.set("k", "v1")
    assert await reader.get("k") == "v1"
    own_redis.pause()
    try:
        assert await eventually(lambda: not reader.l1_enabled)
        assert len(reader.l1) == 0
    finally:
        own_redis.resume()
    assert await reader.wait_ready(10)
    assert reader.stats()["l1_flushes"].get("silence", 0) >= 1


async def test_tracking_mode_sees_writes_by_other_redis_clients(make_acache, raw_redis):
    cache = await make_acache(invalidation="tracking", **BUS)
    assert cache.stats()["invalidation"] == "tracking"
    await cache.set("a", "cached")
    await asyncio.sleep(0.05)
    await cache.get("a")
    assert "a" in cache.l1
    raw_redis.delete(cache.redis_key("a"))
    assert await eventually(lambda: "a" not in cache.l1)
    assert await cache.get("a") is None


async def test_redis_restarted_on_the_same_port(own_redis, own_pair):
    writer, reader = own_pair
    await writer.set("k", "v1")
    assert await reader.get("k") == "v1"
    own_redis.restart()
    assert await eventually(lambda: writer.set("k", "v2"))
    assert await reader.wait_ready(10) and await writer.wait_ready(10)
    # (a pooled connection that died with the server fails one call: that read degrades)
    assert await eventually(lambda: value_is(reader, "k", "v2"))
    await writer.set("k", "v3")
    assert await eventually(lambda: value_is(reader, "k", "v3"))


async def value_is(cache, key, expected):
    return await cache.get(key) == expected


async def test_a_lost_message_flushes_l1(make_acache):
    writer, reader = await make_acache(**BUS), await make_acache(**BUS)
    await writer.set("k", "v")
    assert await settled(writer, reader)
    await reader.get("k")
    writer._shared.publisher._seq += 1  # a message that never reaches anyone
    await writer.set("other", "1")
    assert await eventually(lambda: reader.stats()["messages_lost"] == 1)
    assert "k" not in reader.l1


async def test_slow_subscriber_cut_off_by_the_output_buffer_limit(own_redis, own_pair):
    writer, reader = own_pair
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("client-output-buffer-limit", "pubsub 4kb 4kb 0")
        await writer.set("k", "old")
        await reader.get("k")
        channel = writer._shared.publisher.channel
        for _ in range(20):  # the event loop is busy: the subscriber reads nothing meanwhile
            client.publish(channel, b"x" * 1_000_000)
        client.set(writer.redis_key("k"), b"\x10" + bytes(8) + b"\xa3new")
        client.publish(channel, b"lost with the connection")
        time.sleep(0.5)
        assert await eventually(lambda: reader.stats()["reconnects"] >= 1)
        assert await reader.get("k") == "new"
