"""LocalCache against its peers: get on a hit, get on a miss, set into a full cache.

Run: make bench  (or pytest benchmarks --benchmark-only --benchmark-group-by=group)
"""

from __future__ import annotations

import functools

import cachebox
import cachetools
import lru
import pytest

from tiercache import LocalCache

from .conftest import CPU_TIMER, KEYS, OPS, OTHER_KEYS, TTL, loop_of

pytestmark = CPU_TIMER

RESIDENT = OPS


def filled(cache, setter=None):
    setter = setter or cache.__setitem__
    for i, key in enumerate(KEYS):
        setter(key, i)
    return cache


def _ttl_insert(cache):
    return lambda key, value: cache.insert(key, value, TTL)


# name -> factory returning a full cache holding KEYS, and the bound lookup to time
GET_CASES = {
    "floor": lambda: None,
    "dict.get": lambda: filled({}).get,
    "functools.lru_cache": lambda: _warm_lru_cache(),
    "cachetools.LRUCache": lambda: filled(cachetools.LRUCache(2 * RESIDENT)).get,
    "cachetools.TTLCache": lambda: filled(cachetools.TTLCache(2 * RESIDENT, TTL)).get,
    "cachebox.LRUCache": lambda: filled(cachebox.LRUCache(2 * RESIDENT)).get,
    "cachebox.VTTLCache": lambda: _vttl_filled().get,
    "lru-dict": lambda: filled(lru.LRU(2 * RESIDENT)).get,
    "LocalCache lru": lambda: filled(LocalCache(2 * RESIDENT)).get,
    "LocalCache lru+ttl": lambda: filled(LocalCache(2 * RESIDENT, ttl=TTL)).get,
    "LocalCache s3fifo+ttl": lambda: filled(LocalCache(2 * RESIDENT, ttl=TTL, policy="s3fifo")).get,
    "LocalCache subclass lru": lambda: filled(_Subclass(2 * RESIDENT)).get,
}


class _Subclass(LocalCache):
    """What cachetools users write: __missing__ and an eviction hook (a hit uses neither)."""

    def __missing__(self, key):
        return None

    def popitem(self):
        return super().popitem()


def _warm_lru_cache():
    cached = functools.lru_cache(maxsize=2 * RESIDENT)(lambda key: key)
    for key in KEYS:
        cached(key)
    return cached


def _vttl_filled():
    cache = cachebox.VTTLCache(2 * RESIDENT)
    return filled(cache, _ttl_insert(cache))


@pytest.mark.parametrize("name", list(GET_CASES))
def test_get_hit(benchmark, name):
    benchmark.group = "get-hit"
    benchmark.extra_info["ops"] = OPS
    lookup = GET_CASES[name]()
    run = loop_of(lookup)
    benchmark(run)
    if lookup is not None and name != "functools.lru_cache":
        assert lookup(KEYS[0]) == 0  # the case really measured hits


MISS_CASES = {name: factory for name, factory in GET_CASES.items() if name != "functools.lru_cache"}


@pytest.mark.parametrize("name", list(MISS_CASES))
def test_get_miss(benchmark, name):
    benchmark.group = "get-miss"
    benchmark.extra_info["ops"] = OPS
    lookup = MISS_CASES[name]()
    absent = OTHER_KEYS

    if lookup is None:

        def run():
            for key in absent:
                pass
    else:

        def run():
            for key in absent:
                lookup(key)

    benchmark(run)


def _full(cache, setter):
    for key in KEYS:
        setter(key, 0)
    return setter


# Each round inserts OPS keys the full cache does not hold, alternating between two key
# sets, so every call is an insert that evicts.
SET_CASES = {
    "floor": None,
    "dict (grows, no eviction)": lambda: {}.__setitem__,
    "cachetools.LRUCache": lambda: _full_setter(cachetools.LRUCache(RESIDENT)),
    "cachetools.TTLCache": lambda: _full_setter(cachetools.TTLCache(RESIDENT, TTL)),
    "cachebox.LRUCache": lambda: _full_setter(cachebox.LRUCache(RESIDENT), "insert"),
    "cachebox.VTTLCache": lambda: _full(cache := cachebox.VTTLCache(RESIDENT), _ttl_insert(cache)),
    "lru-dict": lambda: _full_setter(lru.LRU(RESIDENT)),
    "LocalCache lru": lambda: _full_setter(LocalCache(RESIDENT), "set"),
    "LocalCache lru+ttl": lambda: _full(cache := LocalCache(RESIDENT), lambda k, v: cache.set(k, v, TTL)),
    "LocalCache s3fifo+ttl": lambda: _full_setter(LocalCache(RESIDENT, ttl=TTL, policy="s3fifo"), "set"),
}


def _full_setter(cache, method="__setitem__"):
    return _full(cache, getattr(cache, method))


@pytest.mark.parametrize("name", list(SET_CASES))
def test_set_full(benchmark, name):
    benchmark.group = "set-full"
    benchmark.extra_info["ops"] = OPS
    setter = SET_CASES[name]() if SET_CASES[name] else None
    batches = [OTHER_KEYS, KEYS]
    state = {"round": 0}

    if setter is None:

        def run():
            keys = batches[state["round"] % 2]
            state["round"] += 1
            for key in keys:
                pass
    else:

        def run():
            keys = batches[state["round"] % 2]
            state["round"] += 1
            for key in keys:
                setter(key, 1)

    benchmark(run)
