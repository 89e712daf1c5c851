"""Tags: keys written with tags=, removed everywhere by invalidate_tags (core/tags.py)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest

from tiercache import AsyncTieredCache, CacheUnavailable, TieredCache
from tiercache.codec import key_slot

from .conftest import L2_KINDS, heard_everything, wait_until


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


def tag_sets(raw_redis, cache, tag):
    """The tag sets of tag: one, or on a cluster one per slot its keys were in."""
    codec = cache._keys
    if not codec.sharded:
        return [codec.tag_key(tag)]
    slot_tags = raw_redis.smembers(codec.tag_slots(tag))
    return [codec.tag_key(tag, key_slot(b"{" + slot_tag + b"}")) for slot_tag in slot_tags]


def members(raw_redis, cache, tag):
    return {member for tag_set in tag_sets(raw_redis, cache, tag) for member in raw_redis.zrange(tag_set, 0, -1)}


def filed_tag_sets(raw_redis, cache):
    """What the tag index (every slot's, on a cluster) lists."""
    codec = cache._keys
    if not codec.sharded:
        return set(raw_redis.zrange(codec.tag_index(), 0, -1))
    indexes = raw_redis.scan_iter(match=codec.namespace_prefix + b"%I*", count=1000)
    return {tag_set for index in indexes for tag_set in raw_redis.zrange(index, 0, -1)}


def tag_sets_exist(raw_redis, cache, tag):
    return sum(raw_redis.exists(tag_set) for tag_set in tag_sets(raw_redis, cache, tag))


def test_invalidate_tags_removes_tagged_keys_from_redis_and_every_l1(make_cache, raw_redis):
    writer, reader = make_cache(), make_cache()
    writer.set("p:1", {"name": "pen"}, tags=["products", "tenant:1"])
    writer.set_many({"p:2": 2, "p:3": 3}, ttl=60, tags=["products"])
    assert writer.get_or_load("p:4", lambda key: 4, tags=["products"]) == 4
    writer.set("p:5", 5, tags=["tenant:1"])
    writer.set("other", "kept")
    assert heard_everything(writer, reader)
    for key in ("p:1", "p:2", "p:4", "p:5", "other"):
        assert reader.get(key) is not None  # now in the reader's L1
    assert members(raw_redis, writer, "products") == {writer.redis_key(f"p:{i}") for i in (1, 2, 3, 4)}

    assert writer.invalidate_tags(["products"]) == 4
    assert wait_until(lambda: all(reader.l1.peek(f"p:{i}") is None for i in (1, 2, 4)))
    assert [reader.get(f"p:{i}") for i in (1, 2, 3, 4)] == [None] * 4
    assert not raw_redis.exists(*(writer.redis_key(f"p:{i}") for i in (1, 2, 3, 4)))
    assert reader.l1.peek("p:5") == 5 and reader.l1.peek("other") == "kept"
    assert not tag_sets_exist(raw_redis, writer, "products")  # emptied: gone

    assert writer.invalidate_tags(["tenant:1", "tenant:1", "absent"]) == 1  # p:1 is gone already
    assert wait_until(lambda: reader.l1.peek("p:5") is None)
    assert writer.get("other") == "kept"


def test_tags_belong_to_their_namespace_and_never_show_as_keys(make_cache, raw_redis):
    cache = make_cache()
    t1, t2 = cache.namespace("t1"), cache.namespace("t2")
    t1.set("menu", "t1's", tags=["menus"])
    t2.set("menu", "t2's", tags=["menus"])
    cache.set("%Tmenus", "a key that looks like a tag set", tags=["menus"])
    assert set(t1.keys()) == {"menu"} and set(cache.keys()) == {"%Tmenus"}
    assert t1.delete_match("*") == 1  # the tag set is not a key to delete_match
    assert members(raw_redis, t1, "menus") == {t1.redis_key("menu")}  # left to be pruned
    t1.set("menu", "again", tags=["menus"])
    assert t1.invalidate_tags(["menus"]) == 1
    assert t2.get("menu") == "t2's" and cache.get("%Tmenus") == "a key that looks like a tag set"
    assert cache.invalidate_tags(["menus"]) == 1
    assert t2.get("menu") == "t2's"
    assert t2.clear()
    assert not list(raw_redis.scan_iter(match=t2._keys.namespace_prefix + b"*"))


def test_tag_sets_do_not_keep_expired_keys_and_abandoned_tags_are_swept(make_cache, raw_redis):
    cache = make_cache()
    # The keys share a hash tag: on a cluster, a tagged write sweeps its own slot's tag sets.
    for i in range(50):
        cache.set(f"{{s}}old:{i}", i, ttl=0.5, tags=["busy", f"once:{i}"])
    assert len(filed_tag_sets(raw_redis, cache)) == 51
    time.sleep(0.6)  # every key above has expired
    cache.set("{s}new", 1, tags=["busy"])  # settles "busy", and sweeps a few overdue tags
    assert members(raw_redis, cache, "busy") == {cache.redis_key("{s}new")}
    for _ in range(20):  # each tagged write sweeps up to tags.SWEEP abandoned tag sets
        cache.set("{s}new", 1, tags=["busy"])
    assert [tag_sets_exist(raw_redis, cache, f"once:{i}") for i in range(50)] == [0] * 50
    assert filed_tag_sets(raw_redis, cache) == set(tag_sets(raw_redis, cache, "busy"))
    assert [raw_redis.ttl(tag_set) for tag_set in tag_sets(raw_redis, cache, "busy")] == [-1]  # no TTL of its own


def test_a_key_whose_life_expire_lengthened_stays_findable(make_cache, raw_redis):
    cache = make_cache()
    cache.set("k", "v", ttl=0.05, tags=["t"])
    assert cache.expire("k", 60)
    time.sleep(0.15)  # past the TTL the key was tagged with
    cache.set("other", 1, tags=["t"])  # settles "t": k is alive, so it is scored again
    assert cache.redis_key("k") in members(raw_redis, cache, "t")
    assert cache.invalidate_tags(["t"]) == 2
    assert cache.get("k") is None


def test_bad_tags_raise_and_write_nothing(cache, raw_redis):
    for tags, error in (("products", TypeError), ([1], TypeError), ([""], ValueError), (["\ud800"], ValueError)):
        with pytest.raises(error, match="tag"):
            cache.set("k", 1, tags=tags)
        with pytest.raises(error, match="tag"):
            cache.invalidate_tags(tags)
    with pytest.raises(TypeError, match="tags"):
        cache.get_or_load("k", lambda key: 1, tags="x")
    assert not raw_redis.exists(cache.redis_key("k")) and "k" not in cache.l1
    with pytest.raises(ValueError, match="tag template"):
        cache.cached(key="x:{a}", tags=["{b}"])(lambda a: a)


def test_a_refused_tagged_write_files_nothing(make_cache, own_redis, raw_redis):
    import redis as redis_py

    cache = make_cache(url=own_redis.url)
    raw = redis_py.Redis.from_url(own_redis.url)
    cache.set("a", 1, tags=["t"])
    raw.config_set("maxmemory", 1)  # every write is refused (OOM)
    try:
        assert cache.set("b", "x" * 1000, tags=["t"]) is False
        assert cache.l1.peek("b") is None
    finally:
        raw.config_set("maxmemory", 0)
    assert raw.zrange(cache._keys.tag_key("t"), 0, -1) == [cache.redis_key("a")]
    assert cache.invalidate_tags(["t"]) == 1
    raw.close()


def test_invalidate_tags_when_redis_is_down(make_cache, own_redis):
    cache = make_cache(url=own_redis.url)
    strict = make_cache(url=own_redis.url, strict=True, name=cache.name + "s")
    cache.set("a", 1, tags=["t"])
    own_redis.kill()
    assert cache.invalidate_tags(["t"]) == 0
    with pytest.raises(CacheUnavailable):
        strict.invalidate_tags(["t"])


def test_the_decorator_files_results_under_tags_formatted_from_the_call(make_cache):
    cache = make_cache()
    calls = []

    @cache.cached(key="product:{tenant}:{pid}", tags=["tenant:{tenant}", "products"])
    def product(tenant, pid):
        calls.append((tenant, pid))
        return {"tenant": tenant, "pid": pid}

    assert product("a", 1) == product("a", 1) == {"tenant": "a", "pid": 1}
    product("b", 1)
    assert len(calls) == 2
    assert cache.invalidate_tags(["tenant:a"]) == 1
    product("a", 1)
    product("b", 1)
    assert len(calls) == 3  # only tenant a's result was dropped
    assert cache.invalidate_tags(["products"]) == 2


def test_invalidating_a_tag_with_more_keys_than_a_batch(make_cache, raw_redis):
    from tiercache.core import tags

    writer, reader = make_cache(), make_cache()
    count = tags.BATCH * 2 + 7
    writer.set_many({f"k:{i}": i for i in range(count)}, tags=["many"])
    assert reader.get("k:0") == 0 and reader.get(f"k:{count - 1}") == count - 1
    assert writer.invalidate_tags(["many"]) == count
    assert wait_until(lambda: reader.l1.peek("k:0") is None and reader.l1.peek(f"k:{count - 1}") is None)
    assert not list(writer.keys())


def _child_reads_then_waits(url, name, ready, results):
    cache = TieredCache.from_url(url, name=name)
    try:
        cache.wait_ready(10)
        results.put([cache.get(f"p:{i}") for i in range(3)])  # in this process's L1 now
        ready.wait(10)
        gone = wait_until(lambda: all(cache.l1.peek(f"p:{i}") is None for i in range(2)))
        results.put((gone, cache.l1.peek("p:2"), cache.get("p:0")))
    finally:
        cache.close()


def test_another_process_drops_tagged_keys_from_its_l1(make_cache, l2_url):
    cache = make_cache()
    cache.set_many({"p:0": 0, "p:1": 1}, tags=["t"])
    cache.set("p:2", 2)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    child = context.Process(target=_child_reads_then_waits, args=(l2_url, cache.name, ready, results))
    child.start()
    try:
        assert results.get(timeout=30) == [0, 1, 2]
        assert cache.invalidate_tags(["t"]) == 2
        ready.set()
        assert results.get(timeout=30) == (True, 2, None)
    finally:
        child.join(30)
    assert child.exitcode == 0


async def test_async_tags(redis_server, cache_name):
    async with (
        AsyncTieredCache.from_url(redis_server.url, name=cache_name) as writer,
        AsyncTieredCache.from_url(redis_server.url, name=cache_name) as reader,
    ):
        assert await reader.wait_ready(10)
        await writer.set("a", 1, tags=["t"])
        await writer.set_many({"b": 2}, tags=["t"])
        assert await writer.get_or_load("c", lambda key: 3, tags=["t", "u"]) == 3

        @writer.cached(key="d:{x}", tags=["t"])
        async def d(x):
            return x

        assert await d(4) == 4
        assert [await reader.get(key) for key in ("a", "b", "c", "d:4")] == [1, 2, 3, 4]
        assert await writer.invalidate_tags(["t"]) == 4
        for _ in range(200):
            if all(reader.l1.peek(key) is None for key in ("a", "b", "c", "d:4")):
                break
            await asyncio.sleep(0.01)
        assert [await reader.get(key) for key in ("a", "b", "c", "d:4")] == [None] * 4


@pytest.mark.parametrize("l2_kind", ["redis"])  # the walk of one tag set: the same on every kind
def test_keys_tagged_before_the_call_go_however_many_are_tagged_meanwhile(make_cache, raw_redis):
    """New members with a TTL sort ahead of old ones with none: a walk by rank or score
    would spend every step on the new ones (seen: 1,000 keys left behind). Here another
    writer files 600 new keys between every two steps of the walk."""
    from tiercache.core import requests as rq
    from tiercache.core import tags

    cache = make_cache(default_ttl=None)
    cache.set_many({f"old:{i}": i for i in range(1000)}, tags=["T"])
    tag_set, fresh = cache._keys.tag_key("T"), iter(range(10**6))
    carry_out = cache._carry_out

    def another_writer_between_steps(request):
        reply = carry_out(request)
        if isinstance(request, rq.Eval) and request.script == tags.MEMBERS:
            seconds, micros = raw_redis.time()
            now_ms = seconds * 1000 + micros // 1000
            batch = {cache.redis_key(f"new:{next(fresh)}"): b"1" for _ in range(600)}
            raw_redis.mset(batch)
            raw_redis.zadd(tag_set, dict.fromkeys(batch, now_ms + 60_000))
        return reply

    cache._carry_out = another_writer_between_steps
    cache.invalidate_tags(["T"])
    del cache._carry_out
    assert cache.get_many([f"old:{i}" for i in range(1000)]) == {}
    assert not raw_redis.exists(*(cache.redis_key(f"old:{i}") for i in range(1000)))


def test_a_tag_whose_keys_were_deleted_is_swept_even_if_they_had_no_ttl(make_cache, raw_redis, monkeypatch):
    from tiercache.core import tags

    monkeypatch.setattr(tags, "RECHECK_MS", 50)  # a member is looked at again after 50 ms, not an hour
    cache = make_cache(default_ttl=None)
    for i in range(30):  # in one slot on a cluster (the hash tag), where the sweep looks
        cache.set(f"{{s}}k:{i}", i, tags=[f"user:{i}"])
        cache.delete(f"{{s}}k:{i}")
    cache.set("{s}short", 1, tags=["session"])
    cache.expire("{s}short", 0.01)  # shortened: its tag is not told
    time.sleep(0.1)
    for _ in range(12):  # each sweeps up to tags.SWEEP other tag sets
        cache.set("{s}live", 1, tags=["other"])
    assert filed_tag_sets(raw_redis, cache) == set(tag_sets(raw_redis, cache, "other"))
    assert not tag_sets_exist(raw_redis, cache, "session") and not tag_sets_exist(raw_redis, cache, "user:0")
    assert cache.invalidate_tags(["other"]) == 1
