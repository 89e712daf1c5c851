"""LocalCache behaviour, run against the compiled and the pure implementation alike."""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref
from collections.abc import MutableMapping
from datetime import timedelta

import cachetools
import cachetools.keys
import pytest

from tiercache._validate import MAX_MAXSIZE

# -- basics -----------------------------------------------------------------------------


def test_set_get_delete_contains_len(impl):
    cache = impl(maxsize=10)
    assert cache.get("a") is None
    assert cache.get("a", 7) == 7
    cache.set("a", 1)
    cache.set(b"b", [2])
    cache.set(3, None)
    assert cache.get("a") == 1
    assert cache.get(b"b") == [2]
    assert cache.get(3, "default") is None  # a stored None is a hit, not the default
    assert "a" in cache and 3 in cache and "zz" not in cache
    assert len(cache) == 3
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert "a" not in cache and len(cache) == 2


def test_set_replaces_value(impl):
    cache = impl(maxsize=2)
    cache.set("k", 1)
    cache.set("k", 2)
    assert cache.get("k") == 2
    assert len(cache) == 1


def test_equal_keys_of_different_types_are_one_key(impl):
    cache = impl(maxsize=4)
    cache.set(1, "int")
    cache.set(1.0, "float")
    cache.set(True, "bool")
    assert len(cache) == 1
    assert cache.get(1) == "bool"


def test_clear_drops_everything_and_keeps_counters(impl):
    cache = impl(maxsize=5, policy="s3fifo")
    for i in range(20):
        cache.set(i, i)
    cache.get(19)
    cache.clear()
    assert len(cache) == 0 and list(cache) == []
    assert cache.get(19) is None
    stats = cache.stats()
    assert (stats["sets"], stats["hits"], stats["misses"]) == (20, 1, 1)
    cache.set("again", 1)  # usable after clear
    assert cache.get("again") == 1


def test_properties_and_repr(impl, timer):
    cache = impl(maxsize=7, ttl=2.5, policy="s3fifo", timer=timer)
    assert (cache.maxsize, cache.default_ttl, cache.policy, cache.timer) == (7, 2.5, "s3fifo", timer)
    assert impl().default_ttl is None and impl().maxsize == 10_000 and impl().policy == "lru"
    assert repr(cache) == "LocalCache(maxsize=7, size=0, policy='s3fifo')"


# -- LRU --------------------------------------------------------------------------------


def test_lru_evicts_least_recently_used(impl):
    cache = impl(maxsize=3)
    for key in "abc":
        cache.set(key, key)
    cache.get("a")  # order now b, c, a
    cache.set("d", "d")
    assert list(cache) == ["c", "a", "d"]
    cache.set("c", "C")  # a write refreshes too
    cache.set("e", "e")
    assert list(cache) == ["d", "c", "e"]
    assert cache.stats()["evictions"] == 2


def test_lru_miss_does_not_reorder(impl):
    cache = impl(maxsize=2)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("zz")
    assert "a" in cache  # neither `in` nor peek counts as a use
    cache.peek("a")
    cache.set("c", 3)
    assert list(cache) == ["b", "c"]


# -- S3-FIFO ----------------------------------------------------------------------------


def test_s3fifo_keeps_read_entries_over_one_hit_wonders(impl):
    cache = impl(maxsize=10, policy="s3fifo")
    hot = [f"hot{i}" for i in range(5)]
    for key in hot:
        cache.set(key, key)
        cache.get(key)
    for i in range(100):  # a scan of keys read never
        cache.set(f"scan{i}", i)
    assert all(key in cache for key in hot)
    assert cache.stats()["evictions"] == 95


def test_s3fifo_hits_do_not_reorder(impl):
    cache = impl(maxsize=10, policy="s3fifo")
    for i in range(10):
        cache.set(i, i)
    before = list(cache)
    for i in reversed(range(10)):
        cache.get(i)
    assert list(cache) == before


def test_s3fifo_ghost_readmits_to_main(impl):
    cache = impl(maxsize=10, policy="s3fifo")
    for i in range(10):
        cache.set(i, i)
        cache.get(i)  # all read once: they will move to main
    cache.set("once", 0)  # never read: evicted from small into the ghost
    for i in range(3):
        cache.set(f"filler{i}", i)
    assert "once" not in cache
    cache.set("once", 1)  # remembered by the ghost: goes straight to main
    for i in range(3, 6):
        cache.set(f"filler{i}", i)
    assert cache.get("once") == 1


def test_s3fifo_single_entry_cache(impl):
    cache = impl(maxsize=1, policy="s3fifo")
    for i in range(50):
        cache.set(i, i)
        cache.get(i)
        assert list(cache) == [i]


# -- TTL ----------------------------------------------------------------------------------


def test_default_and_per_entry_ttl(impl, timer):
    cache = impl(maxsize=10, ttl=10, timer=timer)
    cache.set("default", 1)
    cache.set("short", 2, ttl=1)
    cache.set("never", 3, ttl=math.inf)
    cache.set("delta", 4, ttl=timedelta(seconds=5))
    timer.advance(1)
    assert cache.get("short") is None
    assert cache.ttl("default") == pytest.approx(9)
    assert cache.ttl("delta") == pytest.approx(4)
    timer.advance(9)
    assert cache.get("default") is None and "delta" not in cache
    assert cache.get("never") == 3
    assert cache.ttl("never") == math.inf
    assert cache.ttl("short") is None and cache.ttl("absent") is None


def test_expired_entry_is_never_returned_by_any_read(impl, timer):
    cache = impl(maxsize=10, timer=timer)
    cache.set("k", "v", ttl=2)
    timer.advance(2)  # exactly at the expiry instant it is gone
    assert "k" not in cache
    assert cache.peek("k") is None
    assert cache.get_many(["k"]) == {}
    assert list(cache) == [] and list(cache.items()) == [] and list(cache.values()) == []
    with pytest.raises(KeyError):
        cache["k"]
    assert cache.get("k") is None
    assert cache.stats()["expirations"] == 1


def test_expire_changes_ttl(impl, timer):
    cache = impl(maxsize=10, ttl=100, timer=timer)
    cache.set("k", 1)
    assert cache.expire("k", 5) is True
    assert cache.ttl("k") == pytest.approx(5)
    assert cache.expire("k", math.inf) is True
    assert cache.ttl("k") == math.inf
    assert cache.expire("k", None) is True  # back to the cache default
    assert cache.ttl("k") == pytest.approx(100)
    assert cache.expire("absent", 5) is False
    timer.advance(100)
    assert cache.expire("k", 5) is False  # expired keys cannot be revived


def test_sweep_reclaims_expired_entries_without_reads(impl, timer):
    cache = impl(maxsize=1000, timer=timer)
    for i in range(400):
        cache.set(i, i, ttl=1)
    timer.advance(2)
    for i in range(100):  # writes advance the sweep; nothing reads the dead keys
        cache.set(f"live{i}", i)
    assert len(cache) == 100
    assert cache.stats()["expirations"] == 400


def test_evict_expired(impl, timer):
    cache = impl(maxsize=10, timer=timer)
    cache.set("a", 1, ttl=1)
    cache.set("b", 2, ttl=3)
    cache.set("c", 3)
    timer.advance(2)
    assert len(cache) == 3  # resident until reclaimed
    assert cache.evict_expired() == 1
    assert len(cache) == 2 and sorted(cache) == ["b", "c"]
    assert cache.stats()["expirations"] == 1


def test_expired_entry_is_evicted_before_its_turn_counts_as_expiration(impl, timer):
    cache = impl(maxsize=2, timer=timer)
    cache.set("old", 1, ttl=1)
    cache.set("new", 2)
    timer.advance(5)
    cache.set("newer", 3)
    stats = cache.stats()
    assert (stats["evictions"], stats["expirations"]) == (0, 1)


def test_real_clock_never_outlives_ttl(impl):
    cache = impl(maxsize=10)
    cache.set("k", 1, ttl=0.05)
    assert cache.get("k") == 1
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:
        time.sleep(0.005)
    assert cache.get("k") is None


# -- stats --------------------------------------------------------------------------------


def test_stats_counts_every_kind_of_event(impl, timer):
    cache = impl(maxsize=2, timer=timer)
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")
    cache.get("missing")
    cache["a"]
    cache.set("c", 3)  # evicts b
    cache.delete("a")
    cache.delete("never-there")
    cache.set("d", 4, ttl=1)
    timer.advance(1)
    cache.get("d")
    assert cache.stats() == {
        "hits": 2,
        "misses": 2,
        "sets": 4,
        "deletes": 1,
        "evictions": 1,
        "expirations": 1,
        "size": 1,
        "maxsize": 2,
    }
    assert (cache.hits, cache.misses) == (2, 2)


# -- bulk ---------------------------------------------------------------------------------


def test_bulk_operations(impl, timer):
    cache = impl(maxsize=10, timer=timer)
    cache.set_many({"a": 1, "b": 2})
    cache.set_many([("c", 3)], ttl=1)
    assert cache.get_many(["a", "c", "zz"]) == {"a": 1, "c": 3}
    timer.advance(1)
    assert cache.get_many(iter(["a", "c"])) == {"a": 1}
    assert cache.delete_many(["a", "b", "zz"]) == 2
    assert len(cache) <= 1 and cache.get_many(["a", "b", "c"]) == {}


def test_set_many_is_all_or_nothing_on_bad_input(impl):
    cache = impl(maxsize=10)
    cache.set("kept", 1)
    with pytest.raises(TypeError, match="unhashable"):
        cache.set_many([("a", 1), (["bad"], 2)])
    with pytest.raises(ValueError, match="ttl"):
        cache.set_many({"a": 1}, ttl=-1)
    with pytest.raises(TypeError, match="unhashable"):
        cache.delete_many(["kept", {}])
    assert list(cache.items()) == [("kept", 1)]


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"maxsize": -1}, ValueError, "maxsize must be between 0 and"),
        ({"maxsize": -5}, ValueError, "maxsize"),
        ({"maxsize": MAX_MAXSIZE + 1}, ValueError, "maxsize"),
        ({"maxsize": 1.5}, TypeError, "maxsize must be an int or math.inf, got float"),
        ({"maxsize": -math.inf}, TypeError, "maxsize must be an int or math.inf"),
        ({"maxsize": math.nan}, TypeError, "maxsize"),
        ({"maxsize": True}, TypeError, "maxsize must be an int"),
        ({"maxsize": "10"}, TypeError, "maxsize"),
        ({"ttl": -1}, ValueError, "ttl must be a positive number of seconds, got -1"),
        ({"ttl": 0}, ValueError, "ttl must be a positive"),
        ({"ttl": math.nan}, ValueError, "ttl"),
        ({"ttl": "60"}, TypeError, "ttl must be a number of seconds, a timedelta or None, got str"),
        ({"policy": "lfu"}, ValueError, "policy must be one of 'lru', 's3fifo', got 'lfu'"),
        ({"policy": None}, ValueError, "policy"),
        ({"timer": 5}, TypeError, "timer must be a callable"),
    ],
)
def test_constructor_rejects_bad_arguments(impl, kwargs, error, match):
    with pytest.raises(error, match=match):
        impl(**kwargs)


@pytest.mark.parametrize("ttl", [-1, 0, -0.5, math.nan, -math.inf, "5", True, [1]])
def test_bad_ttl_leaves_cache_unchanged(impl, ttl):
    cache = impl(maxsize=2)
    cache.set("k", "old")
    with pytest.raises((TypeError, ValueError), match="ttl"):
        cache.set("k", "new", ttl=ttl)
    with pytest.raises((TypeError, ValueError), match="ttl"):
        cache.expire("k", ttl)
    assert list(cache.items()) == [("k", "old")]
    assert cache.ttl("k") == math.inf
    assert cache.stats()["sets"] == 1


def test_unhashable_keys_raise_type_error_and_change_nothing(impl):
    cache = impl(maxsize=2)
    cache.set("k", 1)
    for call in (
        lambda: cache.get([1]),
        lambda: cache.set([1], 1),
        lambda: cache.delete({}),
        lambda: [1] in cache,
        lambda: cache[[1]],
        lambda: cache.ttl([1]),
        lambda: cache.expire([1], 1),
        lambda: cache.get_many([[1]]),
    ):
        with pytest.raises(TypeError, match="unhashable"):
            call()
    assert list(cache.items()) == [("k", 1)]


# -- mapping protocol and cachetools ------------------------------------------------------


def test_is_a_mutable_mapping(impl):
    cache = impl(maxsize=10)
    assert isinstance(cache, MutableMapping)
    cache["a"] = 1
    cache.update({"b": 2}, c=3)
    assert cache["a"] == 1 and dict(cache.items()) == {"a": 1, "b": 2, "c": 3}
    assert list(cache.keys()) == ["b", "c", "a"] and list(cache.values()) == [2, 3, 1]  # "a" was just read
    del cache["a"]
    with pytest.raises(KeyError):
        del cache["a"]
    with pytest.raises(KeyError):
        cache["a"]
    assert cache.setdefault("b", 99) == 2
    assert cache.setdefault("d", 4) == 4 and cache["d"] == 4
    assert cache.pop("b") == 2 and cache.pop("b", "gone") == "gone"
    with pytest.raises(KeyError):
        cache.pop("b")
    assert cache.popitem() == ("c", 3)
    assert cache.popitem() == ("d", 4)
    with pytest.raises(KeyError):
        cache.popitem()


def test_iteration_is_over_a_snapshot(impl):
    cache = impl(maxsize=100)
    for i in range(10):
        cache[i] = i
    seen = []
    for key in cache:
        seen.append(key)
        cache.delete(key)
        cache.set(key + 100, key)
    assert seen == list(range(10))


def test_cachetools_cached_uses_local_cache(impl):
    cache = impl(maxsize=100)
    calls = []

    @cachetools.cached(cache=cache, key=cachetools.keys.hashkey)
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 4]
    assert cache[cachetools.keys.hashkey(3)] == 9
    assert cache.stats()["hits"] >= 1


# -- safety -------------------------------------------------------------------------------


def test_threads_hammering_str_keys_keep_the_cache_consistent(impl):
    cache = impl(maxsize=500, policy="lru")
    errors = []

    def worker(seed):
        try:
            for i in range(5_000):
                key = f"k{(i * 7 + seed) % 800}"
                op = (i + seed) % 4
                if op == 0:
                    cache.set(key, key.upper())
                elif op == 1:
                    value = cache.get(key)
                    if value is not None and value != key.upper():
                        errors.append((key, value))
                elif op == 2:
                    cache.delete(key)
                else:
                    cache.set_many({key: key.upper(), key + "x": key.upper() + "X"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    items = cache.items()
    assert len(items) == len(cache) <= 500
    assert all(value == key.upper() or value == key[:-1].upper() + "X" for key, value in items)


class ReentrantKey:
    """A key whose __eq__ writes to the cache it is being looked up in."""

    def __init__(self, name, cache):
        self.name = name
        self.cache = cache

    def __hash__(self):
        return 42  # every instance collides, so lookups must compare

    def __eq__(self, other):
        self.cache.set(f"side-effect-{self.name}", 1)
        return isinstance(other, ReentrantKey) and other.name == self.name


def test_key_eq_that_mutates_the_cache_does_not_corrupt_it(compiled_impl):
    # Only the compiled L1 promises this; the pure twin's dict runs __eq__ mid-update.
    cache = compiled_impl(maxsize=8)
    keys = [ReentrantKey(i, cache) for i in range(6)]
    for key in keys:
        cache.set(key, key.name)
    for key in keys:
        probe = ReentrantKey(key.name, cache)
        value = cache.get(probe)
        assert value in (key.name, None)
    assert len(cache) == len(cache.items()) <= 8


class Finalizer:
    """A value whose __del__ writes to the cache that held it."""

    def __init__(self, cache, tag):
        self.cache = cache
        self.tag = tag

    def __del__(self):
        self.cache.set(("finalized", self.tag), True)


def test_value_finalizer_may_reenter_the_cache(impl):
    cache = impl(maxsize=4)
    for i in range(20):
        cache.set(i, Finalizer(cache, i))
    cache.set(1000, "x")
    cache.delete(19)
    cache.clear()
    cache.set("after", 1)
    assert cache.get("after") == 1
    assert len(cache) == len(cache.items()) <= 4


def test_released_values_are_freed(impl, timer):
    class Value:
        pass

    cache = impl(maxsize=2, timer=timer)
    refs = []
    for i in range(4):
        value = Value()
        refs.append(weakref.ref(value))
        cache.set(i, value, ttl=1 if i == 3 else None)
        del value
    assert [r() is None for r in refs] == [True, True, False, False]  # two evicted
    cache.set(2, "replaced")
    assert refs[2]() is None
    timer.advance(1)
    cache.get(3)
    assert refs[3]() is None


def test_cycle_through_the_cache_is_collected(impl):
    class Holder:
        pass

    cache = impl(maxsize=10)
    holder = Holder()
    holder.cache = cache
    cache.set("self", holder)
    cache_ref = weakref.ref(cache)
    del cache, holder
    gc.collect()
    assert cache_ref() is None
