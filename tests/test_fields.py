"""Field and list operations: atomic read-modify-writes of one value (requests.Update)."""

from __future__ import annotations

import multiprocessing

import pytest

from tiercache import AsyncTieredCache, TieredCache

from .conftest import L2_KINDS, wait_until


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


def test_fields_of_a_dict(make_cache):
    cache, other = make_cache(), make_cache()
    assert cache.set_field("user:1", "name", "Ada", ttl=60) is True
    assert cache.get("user:1") == {"name": "Ada"}
    assert 59 < cache.ttl("user:1") <= 60
    assert other.get("user:1") == {"name": "Ada"}  # now in the other process's L1
    assert cache.incr_field("user:1", "logins") == 1
    assert cache.incr_field("user:1", "score", 2.5) == 2.5
    assert wait_until(lambda: other.l1.peek("user:1") is None)  # every other L1 drops it
    assert other.get_field("user:1", "logins") == 1
    assert other.get_field("user:1", "missing", "dflt") == "dflt"
    assert cache.delete_field("user:1", "name") is True
    assert cache.delete_field("user:1", "name") is False
    assert cache.get("user:1") == {"logins": 1, "score": 2.5}
    assert 58 < cache.ttl("user:1") <= 60  # an update keeps the TTL
    assert cache.get_field("absent", "x", 0) == 0
    assert cache.delete_field("absent", "x") is False and not cache.exists("absent")


def test_append_keeps_the_newest(make_cache):
    cache, other = make_cache(), make_cache()
    for i in range(25):
        length = cache.append("chat:1", {"turn": i}, max_len=20, ttl=600)
    assert length == 20
    assert [m["turn"] for m in other.get("chat:1")] == list(range(5, 25))
    assert 599 < other.ttl("chat:1") <= 600
    assert cache.append("chat:1", "x") == 21  # no cap this time


def test_a_field_op_on_another_kind_of_value_changes_nothing(make_cache, raw_redis):
    cache = make_cache()
    cache.set("s", "text")
    cache.set("n", [1, 2])
    sent = cache.stats()["invalidations_sent"]
    with pytest.raises(TypeError, match="holds a str, not a dict; nothing was changed"):
        cache.set_field("s", "f", 1)
    with pytest.raises(TypeError, match="not a list"):
        cache.append("s", 1)
    with pytest.raises(TypeError, match="holds a list, not a dict"):
        cache.incr_field("n", "f")
    cache.set_field("d", "f", "text")
    with pytest.raises(TypeError, match="not a number"):
        cache.incr_field("d", "f")
    with pytest.raises(TypeError, match="amount must be"):
        cache.incr_field("d", "g", True)
    with pytest.raises(ValueError, match="max_len"):
        cache.append("l", 1, max_len=0)
    assert cache.get("s") == "text" and cache.get("n") == [1, 2] and cache.get("d") == {"f": "text"}
    # an update that wrote nothing still sent its numbered message: no receiver sees a gap
    assert cache.stats()["invalidations_sent"] >= sent + 1
    assert cache.stats()["l1_flushes"]["message_lost"] == 0


def _increment(url: str, name: str, times: int) -> None:
    with TieredCache.from_url(url, name=name) as cache:
        for _ in range(times):
            cache.incr_field("counters", "messages")
            cache.append("log", 1, max_len=50)


def test_four_processes_increment_exactly(redis_server, cache_name):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_increment, args=(redis_server.url, cache_name, 500)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    with TieredCache.from_url(redis_server.url, name=cache_name) as cache:
        assert cache.get("counters") == {"messages": 2000}
        assert cache.get("log") == [1] * 50


async def test_async_field_operations(redis_server, cache_name):
    async with AsyncTieredCache.from_url(redis_server.url, name=cache_name) as cache:
        assert await cache.set_field("p", "a", 1) is True
        assert await cache.incr_field("p", "a", 2) == 3
        assert await cache.get_field("p", "a") == 3
        assert await cache.delete_field("p", "a") is True
        assert await cache.get("p") == {}
        assert await cache.append("m", "hi", max_len=2) == 1
        assert await cache.append("m", "there", max_len=2) == 2
        assert await cache.append("m", "!", max_len=2) == 2
        assert await cache.get("m") == ["there", "!"]
        with pytest.raises(TypeError):
            await cache.set_field("m", "x", 1)


def test_an_update_redis_refuses_leaves_no_gap_for_receivers(make_cache, raw_redis):
    """WRONGTYPE from the WATCH/GET: nothing written, but the numbered invalidation goes, so
    another process does not read a lost message (and empty its L1)."""
    from tiercache import RedisReplyError

    cache, other = make_cache(), make_cache()
    raw_redis.rpush(cache.redis_key("a list"), b"x")
    other.set("warm", 1)
    assert other.get("warm") == 1
    with pytest.raises(RedisReplyError):
        cache.set_field("a list", "f", 1)
    cache.set("after", 2)  # a later number: a missing one before it would be a gap
    assert wait_until(lambda: other.stats()["invalidations_received"] >= 2)
    assert other.stats()["messages_lost"] == 0 and other.l1.peek("warm") == 1


def test_a_value_that_does_not_decode_is_overwritten(make_cache, raw_redis):
    cache = make_cache()
    raw_redis.set(cache.redis_key("broken"), b"\x10garbage")
    assert cache.get("broken") is None  # a counted miss, as for any read
    assert cache.set_field("broken", "f", 1) is True
    assert cache.get("broken") == {"f": 1}
    assert cache.stats()["decode_errors"] >= 2
