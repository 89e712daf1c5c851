"""TieredCache against a real redis-server: every method, read-through, write-through."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time

import pytest
import redis

import tiercache
from tiercache import DELETED, CacheClosed, CacheError, RedisReplyError, TieredCache
from tiercache.core import plans
from tiercache.local import NO_EXTENSIONS, TieredFront

from .conftest import L2_KINDS, wait_until


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


def test_set_then_get_from_l1_then_from_redis(cache, raw_redis):
    assert cache.set("user:1", {"name": "Ada", "tags": ("a", "b")}) is True
    assert cache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}
    assert cache.stats()["l1_hits"] == 1
    assert raw_redis.exists(cache.redis_key("user:1"))
    cache.l1.clear()
    assert cache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}  # from Redis
    assert cache.get("user:1") == {"name": "Ada", "tags": ("a", "b")}  # filled into L1
    stats = cache.stats()
    assert (stats["l2_hits"], stats["l1_hits"]) == (1, 2)


def test_miss_returns_default(cache):
    assert cache.get("absent") is None
    assert cache.get("absent", "fallback") == "fallback"
    assert cache.stats()["l2_misses"] == 2


@pytest.mark.skipif(NO_EXTENSIONS, reason="the compiled fast path is switched off")
def test_l1_hit_is_the_compiled_fast_path(cache):
    # TieredCache does not override get: an L1 hit never enters a Python frame.
    assert TieredCache.get is TieredFront.get
    assert TieredFront.__module__ == "tiercache._local_c"
    assert type(TieredFront.get).__name__ == "method_descriptor"  # a C method, no CyFunction
    assert tiercache.EXTENSION


def test_other_cache_instance_reads_through_redis(cache, make_cache):
    other = make_cache()
    cache.set("k", [1, 2, 3])
    assert other.get("k") == [1, 2, 3]
    assert other.stats()["l2_hits"] == 1


def test_delete_exists(cache, make_cache):
    other = make_cache()
    cache.set("k", 1.5)
    assert cache.exists("k") and other.exists("k")
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert not cache.exists("k") and cache.get("k") is None and "k" not in cache.l1


def test_bulk_operations(cache, make_cache):
    assert cache.set_many({"a": 1, "b": "two", "c": [3]}) is True
    cache.l1.delete("b")
    assert cache.get_many(["a", "b", "c", "zz"]) == {"a": 1, "b": "two", "c": [3]}
    assert make_cache().get_many(iter(["c", "a"])) == {"c": [3], "a": 1}
    assert cache.delete_many(["a", "b", "zz"]) == 2
    assert cache.get_many(["a", "b", "c"]) == {"c": [3]}
    assert cache.get_many([]) == {} and cache.set_many({}) is True and cache.delete_many([]) == 0


def test_ttl_and_expire(cache, raw_redis):
    cache.set("k", "v", ttl=100)
    assert 99 < cache.ttl("k") <= 100
    assert cache.expire("k", 5) is True
    assert 4 < cache.ttl("k") <= 5
    assert cache.expire("k", math.inf) is True
    assert cache.ttl("k") == math.inf
    assert cache.expire("absent", 5) is False
    assert cache.ttl("absent") is None
    cache.set("short", "v", ttl=0.05)
    time.sleep(0.1)
    assert cache.get("short") is None  # gone from both tiers


def test_default_ttl_applies_to_redis(make_cache):
    cache = make_cache(default_ttl=60)
    cache.set("k", 1)
    assert 59 < cache.ttl("k") <= 60
    forever = make_cache(default_ttl=None)
    forever.set("k2", 1)
    assert forever.ttl("k2") == math.inf


def test_l1_ttl_never_exceeds_redis_ttl(make_cache):
    cache = make_cache(l1_ttl=30)
    cache.set("short", "v", ttl=2)
    assert cache.l1.ttl("short") <= 2
    cache.set("long", "v", ttl=3600)
    assert 29 < cache.l1.ttl("long") <= 30
    # A reader's L1 copy is capped by what Redis has left, read from the value's header.
    cache.set("k", "v", ttl=3600)
    cache.expire("k", 3)
    reader = make_cache(l1_ttl=30)
    assert reader.get("k") == "v"
    assert reader.l1.ttl("k") <= 3


def test_incr(cache, make_cache):
    assert cache.incr("n") == 1
    assert cache.incr("n", 41) == 42
    assert cache.get("n") == 42 and make_cache().get("n") == 42
    assert cache.incr("n", -2) == 40
    cache.set("plain", 7)  # ints are stored so that INCR works on them
    assert cache.incr("plain") == 8
    assert cache.incr("ttl-counter", ttl=50) == 1
    assert 49 < cache.ttl("ttl-counter") <= 50
    cache.set("big-negative", -123456789)  # its "-" must not pass for a header byte
    assert cache.expire("big-negative", 60) is True
    assert cache.get("big-negative") == -123456789 and 59 < cache.ttl("big-negative") <= 60
    assert cache.incr("big-negative") == -123456788
    cache.set("text", "x")
    with pytest.raises(RedisReplyError, match="cannot increment"):
        cache.incr("text")
    with pytest.raises(TypeError, match="amount must be an int"):
        cache.incr("n", 1.5)


def test_namespaces_isolate_and_nest(cache, raw_redis):
    tenant = cache.namespace("t42")
    users = tenant.namespace("users")
    cache.set("k", "root")
    tenant.set("k", "tenant")
    users.set("k", "users")
    assert (cache.get("k"), tenant.get("k"), users.get("k")) == ("root", "tenant", "users")
    cache.l1.clear()
    assert (cache.get("k"), tenant.get("k"), users.get("k")) == ("root", "tenant", "users")
    assert users.path == ("t42", "users") and users.name == cache.name
    assert users.redis_key("k") == f"tc:{cache.name}:@t42:@users:k".encode()
    assert cache.redis_key("user:1") == f"tc:{cache.name}:user:1".encode()


def test_clear_removes_only_its_namespace(cache, make_cache):
    tenant = cache.namespace("t1")
    nested = tenant.namespace("inner")
    other_tenant = cache.namespace("t2")
    cache.set("root", 1)
    tenant.set("a", 1)
    nested.set("b", 2)
    other_tenant.set("a", 3)
    unrelated = make_cache(name=cache.name + "x")  # a cache whose name extends ours
    unrelated.set("a", 4)
    assert tenant.clear() is True
    assert tenant.get("a") is None and nested.get("b") is None
    assert other_tenant.get("a") == 3 and cache.get("root") == 1 and unrelated.get("a") == 4
    assert cache.clear() is True
    assert other_tenant.get("a") is None and cache.get("root") is None and unrelated.get("a") == 4


def test_keys_with_separators_and_bytes_do_not_collide(cache):
    cache.set("a:b", 1)
    cache.namespace("a").set("b", 2)
    cache.set(b"a:b", 3)
    cache.set("%B613a62", 4)  # what a bytes key's escape looks like
    cache.set("@a:b", 5)  # what a namespaced key looks like
    cache.l1.clear()
    got = [cache.get("a:b"), cache.namespace("a").get("b"), cache.get(b"a:b"), cache.get("%B613a62"), cache.get("@a:b")]
    assert got == [1, 2, 3, 4, 5]


# -- read-through ------------------------------------------------------------------------


def test_get_or_load_loads_once_and_stores_in_both_tiers(cache, make_cache):
    calls = []

    def loader(key):
        calls.append(key)
        return {"id": key}

    assert cache.get_or_load("u1", loader) == {"id": "u1"}
    assert cache.get_or_load("u1", loader) == {"id": "u1"}
    assert make_cache().get("u1") == {"id": "u1"}
    assert calls == ["u1"]
    assert cache.stats()["loads"] == 1


def test_loader_exception_propagates_and_nothing_is_cached(cache):
    def broken(key):
        raise LookupError(f"no {key}")

    with pytest.raises(LookupError, match="no u1"):
        cache.get_or_load("u1", broken)
    assert not cache.exists("u1") and "u1" not in cache.l1
    assert cache.stats()["load_errors"] == 1


def test_none_is_not_cached_unless_asked(make_cache):
    calls = []

    def loader(key):
        calls.append(key)

    cache = make_cache()
    assert cache.get_or_load("k", loader) is None
    assert cache.get_or_load("k", loader) is None
    assert len(calls) == 2 and not cache.exists("k")
    keeps_none = make_cache(name=cache.name + "n", cache_none=True)
    assert keeps_none.get_or_load("k", loader) is None
    assert keeps_none.get_or_load("k", loader) is None
    assert len(calls) == 3 and keeps_none.exists("k")


def test_cache_wide_loader_serves_get(make_cache):
    cache = make_cache(loader=lambda key: key * 2)
    assert cache.get("ab") == "abab"
    assert cache.get_many(["ab"]) == {"ab": "abab"}
    assert cache.get_many(["ab", "cd"]) == {"ab": "abab", "cd": "cdcd"}  # cd: neither tier had it
    assert cache.stats()["loads"] == 2
    empty = make_cache(name=cache.name + "e", loader=lambda key: None)
    assert empty.get("x", "default") == "default"
    assert empty.get_many(["x"]) == {}


def test_single_flight_100_threads_one_loader_call(cache):
    calls = []
    release = threading.Event()

    def slow_loader(key):
        calls.append(key)
        release.wait(10)
        return "value"

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_load("cold", slow_loader))) for _ in range(100)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.05)  # let the other 99 reach the flight
    release.set()
    for thread in threads:
        thread.join(10)
    assert calls == ["cold"]
    assert results == ["value"] * 100


def test_single_flight_exception_reaches_every_waiter(cache):
    release = threading.Event()
    started = threading.Event()

    def failing(key):
        started.set()
        release.wait(10)
        raise RuntimeError("db down")

    errors = []

    def call():
        try:
            cache.get_or_load("k", failing)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    started.wait(10)
    time.sleep(0.05)
    release.set()
    for thread in threads:
        thread.join(10)
    assert errors == ["db down"] * 20
    assert not cache.exists("k")


def test_async_loader_is_refused_by_the_sync_cache(cache):
    async def loader(key):
        return 1

    with pytest.raises(TypeError, match="AsyncTieredCache"):
        cache.get_or_load("k", loader)
    assert not cache.exists("k")


# -- write-through -------------------------------------------------------------------------


def test_writer_runs_before_redis_and_l1(make_cache, raw_redis):
    seen = []

    def writer(key, value):
        seen.append((key, value, raw_redis.exists(cache.redis_key(key)), key in cache.l1))

    cache = make_cache(writer=writer)
    cache.set("k", "v1")
    cache.delete("k")
    assert seen == [("k", "v1", 0, False), ("k", DELETED, 1, True)]
    cache.set_many({"a": 1})
    cache.delete_many(["a"])
    assert seen[2:] == [("a", 1, 0, False), ("a", DELETED, 1, True)]


def test_writer_failure_caches_nothing_and_propagates(make_cache):
    def writer(key, value):
        if value == "bad":
            raise ValueError("rejected by the database")

    cache = make_cache(writer=writer)
    cache.set("k", "good")
    with pytest.raises(ValueError, match="rejected"):
        cache.set("k", "bad")
    assert cache.get("k") == "good"
    cache.l1.clear()
    assert cache.get("k") == "good"


# -- the fill guard ------------------------------------------------------------------------


def test_read_overtaken_by_a_write_does_not_fill_l1(cache, raw_redis):
    """Force the race: the GET's reply (the old value) arrives after a set of the key."""
    cache.set("k", "old")
    cache.l1.clear()
    plan = plans.get(cache._scope, "k", None)
    request = next(plan)  # the read has begun: GET is "on the wire"
    old_bytes = raw_redis.get(request.key)
    cache.set("k", "new")  # a write lands meanwhile (L2 and L1)
    cache.l1.clear()  # even with L1 empty, the late old value must not go in
    with pytest.raises(StopIteration) as done:
        plan.send(old_bytes)
    assert done.value.value == "old"  # the caller gets what it read...
    assert "k" not in cache.l1  # ...but L1 does not keep it
    assert cache.stats()["fills_dropped"] == 1
    assert cache.get("k") == "new"


def test_two_writes_in_flight_leave_l1_empty(cache):
    first = plans.set(cache._scope, "k", "one", None)
    second = plans.set(cache._scope, "k", "two", None)
    req1, req2 = next(first), next(second)
    result2 = cache._carry_out(req2)
    result1 = cache._carry_out(req1)  # lands last in Redis
    for plan, result in ((second, result2), (first, result1)):
        with pytest.raises(StopIteration):
            plan.send(result)
    assert "k" not in cache.l1  # neither may claim to be the latest
    assert cache.get("k") == "one"


# -- codec through the cache ---------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_model_rebuilds_dataclass_and_pydantic(cache):
    pydantic = pytest.importorskip("pydantic")

    class User(pydantic.BaseModel):
        id: int
        name: str

    cache.set("p", Point(1, 2))
    cache.set("u", User(id=1, name="Ada"))
    assert cache.get("p") == {"x": 1, "y": 2}
    assert cache.get("p", model=Point) == Point(1, 2)
    cache.l1.clear()
    assert cache.get("u", model=User) == User(id=1, name="Ada")
    assert cache.get("absent", "d", model=User) == "d"


def test_pickle_serializer_signs_and_refuses_tampering(make_cache, raw_redis):
    with pytest.raises(ValueError, match="secret"):
        make_cache(serializer="pickle")
    cache = make_cache(serializer="pickle", secret="s3cret")
    cache.set("obj", Point(3, 4))
    cache.l1.clear()
    assert cache.get("obj") == Point(3, 4)
    blob = bytearray(raw_redis.get(cache.redis_key("obj")))
    blob[-1] ^= 0xFF
    raw_redis.set(cache.redis_key("obj"), bytes(blob))
    cache.l1.clear()
    assert cache.get("obj", "tampered") == "tampered"
    # A signed value moved to another key does not verify either.
    cache.set("a", Point(5, 6))
    raw_redis.set(cache.redis_key("b"), raw_redis.get(cache.redis_key("a")))
    assert cache.get("b") is None
    assert cache.stats()["decode_errors"] == 2


def test_large_values_are_compressed(cache, raw_redis):
    big = {"text": "x" * 10_000}
    cache.set("big", big)
    stored = raw_redis.get(cache.redis_key("big"))
    assert stored[0] == 0x11 and len(stored) < 1000
    cache.l1.clear()
    assert cache.get("big") == big


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [1, None, 1.5, ("a",), ["a"]])
def test_keys_must_be_str_or_bytes(cache, key):
    for call in (
        lambda: cache.get(key),
        lambda: cache.set(key, 1),
        lambda: cache.delete(key),
        lambda: cache.exists(key),
        lambda: cache.get_many([key]),
        lambda: cache.get_or_load(key, str),
        lambda: cache.incr(key),
        lambda: cache.ttl(key),
    ):
        with pytest.raises(TypeError, match="cache keys must be str or bytes"):
            call()


def test_unencodable_value_raises_type_error_and_writes_nothing(make_cache, raw_redis):
    written = []
    cache = make_cache(writer=lambda key, value: written.append(key))
    cache.set("k", "kept")
    with pytest.raises(TypeError, match="cannot serialize a value of type object"):
        cache.set("k", object())
    with pytest.raises(TypeError):
        cache.set_many({"a": 1, "b": {"nested": object()}})
    assert written == ["k"]
    assert cache.get("k") == "kept" and not cache.exists("a") and not cache.exists("b")


@pytest.mark.parametrize("ttl", [0, -1, math.nan, "10", 1e16, 1e17, sys.maxsize])
def test_bad_ttl_is_refused_before_anything_is_written(cache, ttl):
    cache.set("n", 5)
    for write in (
        lambda: cache.set("k", 1, ttl=ttl),
        lambda: cache.set_many({"k": 1}, ttl=ttl),
        lambda: cache.expire("n", ttl),
        lambda: cache.incr("k", ttl=ttl),
    ):
        with pytest.raises((TypeError, ValueError), match="ttl"):
            write()
    assert not cache.exists("k") and cache.get("n") == 5 and cache.ttl("n") > 200


def test_the_longest_ttl_redis_keeps_works_in_both_tiers(cache):
    longest = 4.6e15  # seconds: 146 million years, just under the limit
    assert cache.set("k", "v", ttl=longest) and cache.expire("k", longest)
    assert cache.get("k") == "v" and cache.ttl("k") > 4.5e15
    cache.l1.clear()
    assert cache.get("k") == "v" and "k" in cache.l1


def test_corrupt_bytes_are_a_counted_miss(cache, raw_redis):
    raw_redis.set(cache.redis_key("junk"), b"\x11\x00garbage")
    raw_redis.set(cache.redis_key("junk2"), b"\xff")
    raw_redis.rpush(cache.redis_key("alist"), b"x")
    assert cache.get("junk", "d") == "d"
    assert cache.get("junk2") is None
    assert cache.get("alist") is None
    assert cache.get_many(["junk", "junk2"]) == {}
    assert cache.stats()["decode_errors"] == 5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"name": ""}, "name must be a non-empty str"),
        ({"l1_maxsize": -1}, "maxsize"),
        ({"l1_ttl": -1}, "ttl"),
        ({"default_ttl": 0}, "default_ttl"),
        ({"l1_policy": "lfu"}, "policy"),
        ({"loader": 5}, "loader must be callable"),
        ({"compression": "brotli"}, "compression"),
        ({"serializer": "json"}, "serializer"),
        ({"breaker_threshold": 0}, "breaker_threshold"),
    ],
)
def test_bad_options_are_named(make_cache, options, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make_cache(**options)


def test_a_client_that_decodes_replies_is_refused(redis_server, cache_name):
    import redis

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        TieredCache(client, name=cache_name)
    client.close()


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_a_write_redis_refuses_leaves_no_l1_copy(own_redis, strict):
    """Redis full (maxmemory, noeviction): the write is refused with an error reply."""
    client = redis.Redis.from_url(own_redis.url)
    with TieredCache.from_url(own_redis.url, name="t", strict=strict) as cache:
        assert cache.wait_ready(10)
        cache.set("k", "old")
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # below what the server already uses
        if strict:
            with pytest.raises(RedisReplyError, match="Redis refused set: .*maxmemory") as refused:
                cache.set("k", "x" * 100)
            assert isinstance(refused.value.__cause__.__cause__, redis.exceptions.ResponseError)
        else:
            assert cache.set("k", "x" * 100) is False
        assert "k" not in cache.l1
        assert cache.get("k") == "old" and cache.stats()["breaker"] == "closed"
        assert cache.stats()["write_failures"] == 1
    client.close()


def test_a_refused_write_still_publishes_so_others_see_no_gap(own_redis):
    """The one-command write (plans.WRITE_ONE) keeps the pipeline's behaviour: a SET refused
    for maxmemory still sends its numbered invalidation, so another process drops its copy
    and sees no missing message (which would flush its whole L1)."""
    client = redis.Redis.from_url(own_redis.url)
    with (
        TieredCache.from_url(own_redis.url, name="t") as writer,
        TieredCache.from_url(own_redis.url, name="t") as other,
    ):
        assert writer.wait_ready(10) and other.wait_ready(10)
        writer.set("k", "old")
        writer.set("unrelated", 1)
        assert wait_until(lambda: other.stats()["invalidations_received"] == 2)  # both heard
        assert other.get("k") == "old" and other.get("unrelated") == 1 and "k" in other.l1
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        assert writer.set("k", "x" * 100) is False
        assert wait_until(lambda: "k" not in other.l1)
        client.config_set("maxmemory", 0)
        assert writer.set("k", "new") is True
        assert wait_until(lambda: "k" not in other.l1 or other.l1.peek("k") == "new")
        assert other.stats()["l1_flushes"]["message_lost"] == 0 and "unrelated" in other.l1
    client.close()


def test_existing_client_and_context_manager(redis_server, cache_name):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    with TieredCache(client, name=cache_name) as cache:
        cache.set("k", 1)
        assert cache.get("k") == 1
    assert client.ping()  # a client we were given is not ours to close
    client.close()
    with TieredCache.from_url(redis_server.url, name=cache_name) as owned:
        assert owned.get("k") == 1


def test_closing_a_namespace_view_leaves_the_shared_client_open(cache):
    with cache.namespace("t") as view:
        view.set("k", 1)
    assert cache.set("k", 2) is True and cache.redis.ping()


def test_a_closed_cache_serves_nothing(make_cache):
    cache = make_cache()
    view = cache.namespace("t")
    cache.set("k", "v")
    view.set("k", "v")
    assert "k" in cache.l1
    cache.close()
    assert not cache.l1_enabled and len(cache.l1) == 0
    for closed in (cache, view):
        with pytest.raises(CacheClosed, match="is closed"):
            closed.get("k")  # not the L1 copy, with no subscriber behind it any more
        with pytest.raises(CacheClosed):
            closed.set("k", "w")
        with pytest.raises(CacheClosed):
            closed.get_many(["k"])
    with pytest.raises(CacheClosed):
        cache.wait_ready()
    cache.close()  # closing twice is harmless


def test_set_many_of_many_keys_keeps_them_all_in_l1(make_cache):
    cache = make_cache(l1_maxsize=20_000)
    cache.set_many({f"k{i}": i for i in range(5_000)})  # more keys than the guard's log holds
    assert len(cache.l1) == 5_000
    assert cache.get("k4999") == 4999 and cache.stats()["l2_hits"] == 0


def test_a_loader_that_asks_for_its_own_key_raises_instead_of_hanging(cache):
    def loader(key):
        return cache.get_or_load(key, loader)  # would wait for itself

    with pytest.raises(CacheError, match="asked the cache for 'k' itself"):
        cache.get_or_load("k", loader)
    assert cache.get_or_load("k", lambda key: "fine") == "fine"  # nothing left behind

    def other_key(key):
        return cache.get_or_load(key + "-part", lambda part: 1) + 1  # another key is fine

    assert cache.get_or_load("whole", other_key) == 2


def test_a_from_url_cache_reads_off_the_connection_and_a_given_client_keeps_its_own_path(
    redis_server, cache_name, monkeypatch
):
    """cache.lean_call: a client from_url made skips redis.Redis's per-command bookkeeping for
    GET/MGET/EVAL; a client the user gave (maybe with retries or a single connection) is
    always called through its own methods. Error replies come through either way."""
    sent = []
    original = redis.Redis.execute_command

    def counting(self, *args, **options):
        sent.append(args[0])
        return original(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counting)
    with TieredCache.from_url(redis_server.url, name=cache_name) as cache:
        assert cache.wait_ready(10)
        cache.set("k", {"v": 1})
        cache.redis.lpush(cache._keys.redis_key("list"), b"x")  # a key of another type
        cache.l1.clear()
        sent.clear()
        assert cache.get("k") == {"v": 1} and cache.get_many(["k", "absent"]) == {"k": {"v": 1}}
        assert not {"GET", "MGET", "EVAL"} & set(sent)
        assert cache.get("list", "dflt") == "dflt" and cache.stats()["decode_errors"] == 1  # WRONGTYPE
    client = redis.Redis.from_url(redis_server.url)
    with TieredCache(client, name=cache_name) as given:
        sent.clear()
        assert given.get("k") == {"v": 1} and "GET" in sent
    client.close()


def test_a_server_that_refuses_scripts_gets_pipelined_writes_with_no_gap(own_redis):
    """An ACL user without @scripting (or EVAL renamed away): the one-command write
    (plans.WRITE_ONE) falls back to the pipeline, with the same numbered invalidation, so
    the write lands and no other process flushes its L1 over a missing message."""
    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-@scripting"]
    )
    url = own_redis.url.replace("redis://", "redis://app:pw@")
    with (
        TieredCache.from_url(url, name="t", lease=False) as writer,
        TieredCache.from_url(url, name="t", lease=False) as other,
    ):
        assert writer.wait_ready(10) and other.wait_ready(10)
        other.set("mine", 1)
        assert writer.set("k", "v1") is True and writer.delete("k") is True
        assert writer.set("k", "v2") is True and writer._shared.write_scripts is False
        assert other.get("k") == "v2"
        writer.set("k", "v3")
        assert wait_until(lambda: other.l1.peek("k") is None)
        assert other.stats()["l1_flushes"]["message_lost"] == 0 and other.l1.peek("mine") == 1
    admin.close()


def test_the_lean_path_keeps_a_connection_after_an_error_reply_and_stands_aside_for_retries(
    redis_server, cache_name, monkeypatch
):
    """An error reply is read whole, so lean_call keeps the connection (a WRONGTYPE key read
    in a loop must not open a connection a read); a client asked to retry takes redis-py's
    own path for every command, reads included."""
    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    server = redis.Redis.from_url(redis_server.url)
    with TieredCache.from_url(redis_server.url, name=cache_name) as cache:
        assert cache.wait_ready(10)
        cache.redis.rpush(cache._keys.redis_key("list"), b"x")
        cache.get("list")  # the pool may open its reading connection here
        before = server.info("stats")["total_connections_received"]
        for _ in range(20):
            assert cache.get("list", "dflt") == "dflt"
        assert server.info("stats")["total_connections_received"] == before
        assert cache.stats()["decode_errors"] == 21
    server.close()
    sent = []
    original_execute = redis.Redis.execute_command
    monkeypatch.setattr(
        redis.Redis, "execute_command", lambda self, *a, **k: sent.append(a[0]) or original_execute(self, *a, **k)
    )
    retrying = {"retry": Retry(ConstantBackoff(0.01), 2)}
    with TieredCache.from_url(redis_server.url, name=cache_name, redis_options=retrying) as cache:
        cache.get("k")
        assert "GET" in sent
