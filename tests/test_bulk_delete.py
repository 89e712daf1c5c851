"""delete_prefix / delete_match: SCAN + UNLINK in Redis, one message for every L1."""

from __future__ import annotations

import pytest

from tiercache import AsyncTieredCache, CacheUnavailable
from tiercache.codec import glob_regex
from tiercache.core import invalidation

from .conftest import L2_KINDS, heard_everything, wait_until


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


@pytest.mark.parametrize(
    "pattern, key, matches",
    [
        (b"a*", b"abc", True),
        (b"a?c", b"abc", True),
        (b"a?c", b"ac", False),
        (b"a[bx]c", b"axc", True),
        (b"a[^b]c", b"abc", False),
        (b"a[a-c]c", b"abc", True),
        (b"a[c-a]c", b"abc", True),  # Redis sorts a reversed range
        (b"a\\*", b"a*", True),
        (b"a\\*", b"ab", False),
        (b"user:*", b"user:\n1", True),
        (b"x[]", b"x", False),
    ],
)
@pytest.mark.parametrize("l2_kind", ["redis"])  # Redis's glob, not the L2's shape
def test_the_glob_matches_as_redis_does(pattern, key, matches, raw_redis):
    assert bool(glob_regex(pattern).fullmatch(key)) is matches
    raw_redis.set(b"globtest:" + key, 1)
    found = set(raw_redis.scan_iter(match=b"globtest:" + pattern, count=1000))
    assert (b"globtest:" + key in found) is matches
    raw_redis.delete(b"globtest:" + key)


@pytest.mark.parametrize("l2_kind", ["redis"])  # Redis's glob, not the L2's shape
def test_the_glob_agrees_with_redis_on_random_patterns(raw_redis):
    """Differential: every pattern over an alphabet of the special bytes, against SCAN MATCH."""
    import random

    rng = random.Random(7)
    alphabet = [b"a", b"b", b"-", b"]", b"[", b"^", b"\\", b"*", b"?", b"z"]
    keys = sorted({b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4))) for _ in range(600)})
    raw_redis.mset({b"diff:" + key: 1 for key in keys})
    try:
        for _ in range(400):
            pattern = b"diff:" + b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
            theirs = set(raw_redis.scan_iter(match=pattern, count=10_000))
            regex = glob_regex(pattern)
            assert {b"diff:" + key for key in keys if regex.fullmatch(b"diff:" + key)} == theirs, pattern
    finally:
        raw_redis.delete(*(b"diff:" + key for key in keys))


def test_delete_prefix_reaches_redis_and_every_l1(make_cache, cache_name):
    writer, reader = make_cache(), make_cache()
    writer.set_many({**{f"user:{i}": i for i in range(1500)}, "order:1": "o", "user": "bare"})
    writer.namespace("t1").set("user:1", "nested")
    assert heard_everything(writer, reader)
    for key in ("user:1", "user:1499", "order:1"):
        assert reader.get(key) is not None  # now in the reader's L1
    assert writer.delete_prefix("user:") == 1500
    assert wait_until(lambda: reader.l1.peek("user:1") is None and reader.l1.peek("user:1499") is None)
    assert reader.l1.peek("order:1") == "o"  # another prefix: kept
    assert reader.get("user:1") is None and writer.get("user:7") is None
    assert writer.get("user") == "bare" and writer.get("order:1") == "o"
    assert writer.namespace("t1").get("user:1") == "nested"  # a nested namespace is not this one
    assert reader.stats()["l1_flushes"]["clear"] == 0  # dropped by pattern, not emptied


def test_delete_match_in_a_namespace_and_glob_characters_in_prefixes(make_cache):
    cache = make_cache()
    tenant = cache.namespace("t*1")
    tenant.set_many({"a[1]": 1, "a[2]": 2, "ab": 3, "@odd": 4})
    cache.set("a[1]", "root")
    assert tenant.delete_prefix("a[") == 2
    assert tenant.get("ab") == 3 and cache.get("a[1]") == "root"
    assert tenant.delete_match("?b") == 1
    assert tenant.delete_prefix("@") == 1  # stored as %40odd: the prefix is escaped the same way
    assert set(tenant.keys()) == set()


def test_a_bulk_delete_revokes_load_leases(make_cache, raw_redis):
    cache = make_cache()
    cache.set("p:1", 1)
    lease = cache._shared.keys.lease_key(cache.redis_key("p:1"))
    absent = cache._shared.keys.lease_key(cache.redis_key("p:absent"))  # a load of a key not in Redis
    nested = cache._shared.keys.lease_key(cache.namespace("n").redis_key("p:1"))
    for key in (lease, absent, nested):
        raw_redis.set(key, b"someone-loading")
    assert cache.delete_prefix("p:") == 1  # leases are not counted
    assert not raw_redis.exists(lease) and not raw_redis.exists(absent)
    assert raw_redis.exists(nested)  # another namespace's


def test_an_unknown_op_empties_l1(cache):
    """A message from a newer writer that this version cannot read: what it changed is
    unknown, so L1 is emptied rather than left stale."""
    cache.set("k", 1)
    state = cache._shared.bus_state
    other = invalidation.Publisher(cache._shared.publisher.channel)
    assert cache.l1.peek("k") == 1
    state.apply(other._message(99, [b"whatever"]), 0.0)
    assert cache.l1.peek("k") is None
    assert cache.stats()["l1_flushes"]["clear"] == 1


def test_bulk_delete_when_redis_is_down(make_cache, own_redis):
    cache = make_cache(url=own_redis.url)
    strict = make_cache(url=own_redis.url, strict=True, name=cache.name + "s")
    cache.set("x:1", 1)
    own_redis.kill()
    assert cache.delete_prefix("x:") == 0
    assert cache.l1.peek("x:1") is None  # dropped here whatever Redis did
    with pytest.raises(CacheUnavailable):
        strict.delete_prefix("x:")


def test_bad_arguments(cache):
    with pytest.raises(TypeError):
        cache.delete_prefix(b"x")
    with pytest.raises(TypeError):
        cache.delete_match(None)


async def test_async_bulk_delete(redis_server, cache_name):
    async with AsyncTieredCache.from_url(redis_server.url, name=cache_name) as cache:
        await cache.set_many({f"s:{i}": i for i in range(20)})
        await cache.set("t:1", 1)
        assert await cache.delete_prefix("s:") == 20
        assert await cache.delete_match("t:?") == 1
        assert [key async for key in cache.keys("*")] == []
