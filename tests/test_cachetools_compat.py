"""LocalCache as a drop-in for cachetools' LRUCache/TTLCache and for dict-like code: size 0
and unbounded, copies and pickles, subclasses, the Mapping protocol. Both twins."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import ItemsView, KeysView, MutableMapping, ValuesView

import cachetools
import pytest

from tiercache import _local_py
from tiercache.local import NO_EXTENSIONS


class Holder:
    """An application object that keeps a cache (pickled with its owner)."""

    def __init__(self, cache):
        self.cache = cache


def _logged(base):
    class Logged(base):
        def __init__(self, maxsize):  # a subclass with its own signature
            super().__init__(maxsize, ttl=None, policy="lru")
            self.evicted = []

        def __missing__(self, key):
            return f"computed {key}"

        def popitem(self):
            pair = super().popitem()
            self.evicted.append(pair)
            return pair

    return Logged


LoggedPy = _logged(_local_py.LocalCache)
LoggedPy.__qualname__ = "LoggedPy"
if not NO_EXTENSIONS:
    from tiercache import _local_c

    LoggedC = _logged(_local_c.LocalCache)
    LoggedC.__qualname__ = "LoggedC"


@pytest.fixture
def logged(impl):
    return LoggedPy if impl is _local_py.LocalCache else LoggedC


# -- size 0 and unbounded ----------------------------------------------------------------


def test_maxsize_zero_stores_nothing_and_cachetools_cached_computes_every_call(impl):
    cache = impl(maxsize=0)
    cache["a"] = 1
    cache.set_many({"b": 2, "c": 3})
    assert len(cache) == 0 and "a" not in cache and cache.get("a") is None
    assert cache.stats()["sets"] == 3 and cache.stats()["evictions"] == 3  # stored, gone at once
    calls = []

    @cachetools.cached(cache=impl(maxsize=0))
    def square(x):
        calls.append(x)
        return x * x

    assert [square(3), square(3), square(4)] == [9, 9, 16]
    assert calls == [3, 3, 4]


def test_maxsize_inf_is_unbounded(impl):
    cache = impl(maxsize=math.inf, policy="s3fifo")
    for i in range(20_000):
        cache[i] = i
    assert len(cache) == 20_000 and cache.stats()["evictions"] == 0
    assert cache.maxsize == math.inf and cache.stats()["maxsize"] == math.inf
    assert "maxsize=inf" in repr(cache)


def test_cachetools_cached_and_keys_work_with_a_local_cache(impl):
    cache = impl(maxsize=2)
    calls = []

    @cachetools.cached(cache=cache, key=cachetools.keys.hashkey)
    def double(x):
        calls.append(x)
        return 2 * x

    assert [double(1), double(1), double(2), double(3), double(1)] == [2, 2, 4, 6, 2]
    assert calls == [1, 2, 3, 1]  # 1 was evicted by 3 (LRU, maxsize 2)
    assert cache.currsize == 2 and cache.maxsize == 2 and cache.getsizeof(object()) == 1


# -- copies and pickles ------------------------------------------------------------------


def test_copy_is_independent_with_the_same_entries_order_and_ttls(impl, timer):
    cache = impl(maxsize=4, ttl=10, timer=timer)
    for key in "abcd":
        cache[key] = [key]
    cache.set("forever", 0, ttl=math.inf)  # evicts "a"
    cache.get("b")  # "b" becomes most recent
    timer.advance(3)
    twin = copy.copy(cache)
    assert type(twin) is impl and twin.timer is timer
    assert list(twin.items()) == list(cache.items()) == [
        ("c", ["c"]), ("d", ["d"]), ("forever", 0), ("b", ["b"]),
    ]  # fmt: skip
    assert twin.peek("c") is cache.peek("c")  # shallow: the same value objects
    assert [twin.ttl(k) for k in twin] == [cache.ttl(k) for k in cache] == [7, 7, math.inf, 7]
    assert twin.stats() == cache.stats()
    del twin["c"]
    twin["e"] = 1
    assert list(cache) == ["c", "d", "forever", "b"]  # the source is untouched
    timer.advance(7)  # both expire on the same clock
    assert list(twin) == ["forever", "e"] and list(cache) == ["forever"]


def test_deepcopy_copies_keys_and_values_and_keeps_the_timer(impl, timer):
    cache = impl(maxsize=10, ttl=5, timer=timer)
    cache["k"] = {"nested": [1]}
    cache["self"] = cache  # a value that refers back to its cache
    twin = copy.deepcopy(cache)
    assert twin.peek("k") == {"nested": [1]} and twin.peek("k") is not cache.peek("k")
    assert twin.peek("self") is twin and twin.timer is timer
    assert twin.ttl("k") == cache.ttl("k") == 5


def test_pickle_round_trips_remaining_ttls_order_and_counters(impl):
    cache = impl(maxsize=100, ttl=60, policy="s3fifo")
    for i in range(150):
        cache[i] = str(i)
        cache.get(i // 3)
    before = cache.stats()
    clone = pickle.loads(pickle.dumps(cache))
    assert list(clone.items()) == list(cache.items())
    assert clone.stats() == before  # counters are kept
    assert 59 < clone.ttl(149) <= 60  # remaining seconds, re-based on the clock that loads it
    holder = pickle.loads(pickle.dumps(Holder(cache)))
    assert dict(holder.cache.items()) == dict(cache.items())


def test_a_bad_state_is_refused_and_changes_nothing(impl):
    cache = impl(maxsize=3)
    cache["kept"] = 1
    for state in (
        None,
        (("not", "a", "state"), None),
        ((1, 3, None, "lru", None, False, [("k", 1, 1.0, 9, 0)], (0,) * 6, []), None),
    ):
        with pytest.raises((TypeError, ValueError), match="state"):
            cache.__setstate__(state)
    assert dict(cache.items()) == {"kept": 1} and cache.maxsize == 3


# -- subclasses --------------------------------------------------------------------------


def test_subclass_missing_and_popitem_hook_as_in_cachetools(impl, logged):
    cache = logged(2)
    assert cache["nope"] == "computed nope" and cache.get("nope") is None  # get never calls it
    cache["a"], cache["b"] = 1, 2
    cache.get("a")
    cache["c"] = 3  # full: popitem() is what makes room, so the override sees the eviction
    cache.update({"d": 4})
    assert cache.evicted == [("b", 2), ("a", 1)]
    assert list(cache) == ["c", "d"] and cache.stats()["evictions"] == 2
    assert isinstance(cache, impl) and isinstance(cache, MutableMapping)


def test_subclass_copies_and_pickles_keep_its_attributes(logged):
    cache = logged(2)
    for key in "abc":
        cache[key] = key
    shallow = copy.copy(cache)
    assert type(shallow) is logged and shallow.evicted is cache.evicted  # as copy.copy of any object
    for twin in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert type(twin) is logged and twin.evicted == [("a", "a")]
        assert list(twin.items()) == [("b", "b"), ("c", "c")]
        twin["d"] = "d"
        assert twin.evicted == [("a", "a"), ("b", "b")]
    assert cache.evicted == [("a", "a")]


# -- the Mapping protocol ------------------------------------------------------------------


def test_equality_is_by_contents_and_a_cache_is_unhashable(impl):
    one, two = impl(maxsize=5), impl(maxsize=50, policy="s3fifo")
    one.update({"a": 1, "b": 2})
    two.update({"b": 2, "a": 1})
    assert one == two == {"a": 1, "b": 2}
    assert (one != two) is False  # __ne__ answers too
    two["a"] = 9
    assert one != two and one != {"a": 1} and one != [("a", 1), ("b", 2)]
    with pytest.raises(TypeError, match="unhashable"):
        hash(one)


def test_views_are_set_like_snapshots_that_count_nothing(impl):
    cache = impl(maxsize=10)
    cache.update({"a": 1, "b": 2, "c": 3})
    keys, values, items = cache.keys(), cache.values(), cache.items()
    assert isinstance(keys, KeysView) and isinstance(values, ValuesView) and isinstance(items, ItemsView)
    assert keys & {"a", "z"} == {"a"} and keys | {"z"} == {"a", "b", "c", "z"}
    assert ("a", 1) in items and ("a", 2) not in items and 2 in values and 7 not in values
    assert len(keys) == len(values) == len(items) == 3
    assert cache.stats()["hits"] == 0  # no view counted a hit or moved an entry
    cache["d"] = 4
    assert list(keys) == ["a", "b", "c", "d"]  # a view reflects the cache as it is now
    assert list(reversed(cache)) == list(reversed(keys)) == ["d", "c", "b", "a"]
    assert list(reversed(items))[0] == ("d", 4)


def test_generic_alias_and_empty_popitem(impl):
    alias = impl[str, int]
    assert alias.__origin__ is impl and alias.__args__ == (str, int)
    with pytest.raises(KeyError) as raised:
        impl(maxsize=3).popitem()
    assert raised.value.__context__ is None and raised.value.__cause__ is None


def test_len_counts_expired_entries_until_reclaimed_in_both_twins(impl, timer):
    cache = impl(maxsize=10, timer=timer)
    cache.set("short", 1, ttl=1)
    cache.set("long", 2, ttl=10)
    timer.advance(2)
    assert len(cache) == cache.currsize == 2 and list(cache) == ["long"]
    assert cache.evict_expired() == 1 and len(cache) == 1


def test_popitem_evicts_what_the_policy_would(impl):
    cache = impl(maxsize=10, policy="s3fifo")
    for i in range(10):
        cache[i] = i
    cache.get(0)  # read since queued: gets another lap instead of going
    assert cache.popitem() == (1, 1)
    assert 0 in cache and cache.stats()["evictions"] == 1


# -- found by the hostile review -----------------------------------------------------------


def test_a_timer_returning_nan_is_refused_by_name(impl):
    now = [0.0]
    cache = impl(maxsize=10, timer=lambda: now[0])
    cache.set("a", 1, ttl=100)
    now[0] = math.nan
    with pytest.raises(ValueError, match="timer returned NaN"):
        cache.get("a")
    now[0] = 1.0
    assert cache.get("a") == 1  # nothing was lost


def test_an_eq_that_gives_the_cache_a_ttl_mid_lookup_still_uses_the_timer(impl):
    cache = impl(maxsize=10, timer=lambda: 0.0)  # no ttl yet: the timer need not be read

    class Key:
        armed = False

        def __hash__(self):
            return 1

        def __eq__(self, other):
            if Key.armed:
                Key.armed = False
                cache.expire(stored, 100)  # now the cache has a ttl, on the fake clock
            return isinstance(other, Key)

    stored = Key()
    cache[stored] = "v"
    Key.armed = True
    assert cache.get(Key()) == "v" and cache.ttl(stored) == 100  # not judged on the real clock


def test_set_state_is_all_or_nothing(impl):
    cache = impl(maxsize=3)
    cache["keep"] = 1
    good = ("a", 1, math.inf, 0, 0)
    for bad, error in (((("b", 2, 10**400, 0, 0)), OverflowError), ((("b", 2, math.nan, 0, 0)), ValueError)):
        state = (1, 10, None, "s3fifo", None, False, [good, bad], (0,) * 6, [])
        with pytest.raises(error):
            cache.__setstate__((state, None))
        assert dict(cache.items()) == {"keep": 1} and cache.maxsize == 3 and cache.policy == "lru"


def test_a_hash_cannot_slip_an_unchecked_entry_into_a_state(impl):
    entries = []

    class Key:
        def __init__(self, n):
            self.n = n

        def __hash__(self):
            if self.n == 0 and len(entries) == 1:
                entries.append((Key(1), "x", math.inf, 255, 7))  # after the check ran
            return self.n

        def __eq__(self, other):
            return isinstance(other, Key) and other.n == self.n

    entries.append((Key(0), "v", math.inf, 0, 0))
    cache = impl(maxsize=4, policy="s3fifo")
    cache.__setstate__(((1, 4, None, "s3fifo", None, False, entries, (0,) * 6, []), None))
    assert [value for _, value in cache.items()] == ["v"]
    copy.copy(cache)  # its state is valid, so it copies


def test_an_unbounded_s3fifo_cache_evicts_without_a_huge_ghost(impl):
    cache = impl(maxsize=math.inf, policy="s3fifo")
    cache["a"] = 1
    assert cache.popitem() == ("a", 1)  # the ghost grows as it fills: no 2**31-entry array
    cache["b"] = 2
    assert list(cache) == ["b"]


def test_a_ttl_below_the_clock_tick_is_not_dead_on_arrival(impl):
    cache = impl(maxsize=10)
    alive = []
    for attempt in range(5):  # a tick may pass between set and get; not five times running
        cache.set(attempt, 1, ttl=0.0005)
        alive.append(cache.get(attempt) == 1)
    assert any(alive)
