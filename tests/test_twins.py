"""The compiled and the pure L1 driven by the same random operations must agree on everything.

Every rule runs on both caches and compares the return values; after every step the two
must hold the same items in the same eviction order with the same counters. Time moves
through a shared fake timer, so expiry and the write-path sweep are exercised too.
"""

from __future__ import annotations

import copy
import math
import pickle
import weakref
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tiercache import _local_py
from tiercache.local import NO_EXTENSIONS

from .conftest import FakeTimer

if NO_EXTENSIONS:
    pytest.skip("compares against the compiled L1, which this run has switched off", allow_module_level=True)

from tiercache import _local_c

keys = st.one_of(st.integers(-3, 24), st.sampled_from(["a", "b", "c", "d", b"a", b"e", "é"]))
values = st.integers() | st.text(max_size=3) | st.none()
ttls = st.none() | st.sampled_from([0.5, 1, 2.5, 10, math.inf])


class _Logged:
    """What cachetools users write: __missing__, and popitem() overridden to log evictions."""

    def __missing__(self, key):
        return ("missing", key)

    def popitem(self):
        pair = super().popitem()
        self.evicted.append(pair)
        return pair


class LoggedC(_Logged, _local_c.LocalCache):
    pass


class LoggedPy(_Logged, _local_py.LocalCache):
    pass


def counters(cache):
    """stats() but the size, which counts expired entries a copy or pickle leaves out."""
    return {name: n for name, n in cache.stats().items() if name != "size"}


class Reentrant:
    """A value whose release (eviction, replacement, expiry, deletion) writes to the cache
    that held it: both twins release at the same points, so the writes land alike."""

    def __init__(self, cache, label):
        self.cache = weakref.ref(cache) if cache is not None else lambda: None
        self.label = label

    def __reduce__(self):  # a copy or a pickle is inert: it writes nowhere when released
        return Reentrant, (None, self.label)

    def __eq__(self, other):
        return isinstance(other, Reentrant) and other.label == self.label

    def __hash__(self):
        return hash(self.label)

    def __repr__(self):
        return f"Reentrant({self.label!r})"

    def __del__(self):
        cache = self.cache()
        if cache is not None:
            cache.set("released", self.label)


class TwinMachine(RuleBasedStateMachine):
    """Run each operation on compiled and pure and demand the same outcome."""

    @initialize(
        maxsize=st.integers(0, 12),
        default_ttl=st.none() | st.sampled_from([1, 3, 30]),
        policy=st.sampled_from(["lru", "s3fifo"]),
        subclass=st.booleans(),
    )
    def create(self, maxsize, default_ttl, policy, subclass):
        self.timer = FakeTimer()
        if subclass:
            self.compiled = LoggedC(maxsize, default_ttl, policy, self.timer)
            self.pure = LoggedPy(maxsize, default_ttl, policy, self.timer)
            self.compiled.evicted, self.pure.evicted = [], []
        else:
            self.compiled = _local_c.LocalCache(maxsize, default_ttl, policy, self.timer)
            self.pure = _local_py.LocalCache(maxsize, default_ttl, policy, self.timer)

    def both(self, method, *args):
        outcomes = []
        for cache in (self.compiled, self.pure):
            try:
                outcomes.append(("ok", getattr(cache, method)(*args)))
            except Exception as exc:  # the same error must come from both
                outcomes.append(("raised", type(exc), str(exc)))
        assert outcomes[0] == outcomes[1], (method, args, outcomes)
        return outcomes[0]

    @rule(key=keys, value=values, ttl=ttls)
    def set(self, key, value, ttl):
        self.both("set", key, value, ttl)

    @rule(key=keys)
    def get(self, key):
        self.both("get", key, "<default>")

    @rule(key=keys)
    def getitem(self, key):
        self.both("__getitem__", key)

    @rule(key=keys)
    def contains(self, key):
        self.both("__contains__", key)

    @rule(key=keys)
    def delete(self, key):
        self.both("delete", key)

    @rule(key=keys)
    def ttl(self, key):
        self.both("ttl", key)

    @rule(key=keys, ttl=ttls)
    def expire(self, key, ttl):
        self.both("expire", key, ttl)

    @rule(batch=st.lists(keys, max_size=6))
    def get_many(self, batch):
        self.both("get_many", batch)

    @rule(batch=st.dictionaries(keys, values, max_size=6), ttl=ttls)
    def set_many(self, batch, ttl):
        self.both("set_many", batch, ttl)

    @rule(batch=st.lists(keys, max_size=6))
    def delete_many(self, batch):
        self.both("delete_many", batch)

    @rule(key=keys)
    def pop(self, key):
        self.both("pop", key, None)

    @rule()
    def popitem(self):
        self.both("popitem")

    @rule(seconds=st.sampled_from([0.25, 0.5, 1, 2, 5]))
    def advance(self, seconds):
        self.timer.advance(seconds)

    @rule()
    def evict_expired(self):
        self.both("evict_expired")

    @precondition(lambda self: self.compiled.stats()["sets"] % 7 == 6)
    @rule()
    def clear(self):
        self.both("clear")

    @rule(key=keys, label=st.integers(0, 3))
    def set_reentrant(self, key, label):
        """A value whose __del__ writes to its cache, released whenever the cache lets go."""
        self.compiled.set(key, Reentrant(self.compiled, label))
        self.pure.set(key, Reentrant(self.pure, label))

    @rule(deep=st.booleans())
    def copy(self, deep):
        """Continue on copies: the same entries, order, expiries, policy state and counters
        (the timer is shared), and the originals are left as they were."""
        make = copy.deepcopy if deep else copy.copy
        before = list(self.compiled.items()), self.compiled.stats()
        compiled, pure = make(self.compiled), make(self.pure)
        assert type(compiled) is type(self.compiled) and compiled.timer is self.timer
        for original, twin in ((self.compiled, compiled), (self.pure, pure)):
            assert list(twin.items()) == list(original.items())
            assert counters(twin) == counters(original) and len(twin) == len(list(twin))  # live only
            assert [twin.ttl(k) for k in twin] == [original.ttl(k) for k in original]
        compiled.set("only-in-copy", 1), pure.set("only-in-copy", 1)
        assert (list(self.compiled.items()), self.compiled.stats()) == before
        self.compiled, self.pure = compiled, pure

    @rule()
    def pickle_round_trip(self):
        """A pickle holds the same live entries in the same order with the same counters."""
        for cache in (self.compiled, self.pure):
            clone = pickle.loads(pickle.dumps(cache))
            assert type(clone) is type(cache)
            assert list(clone.items()) == list(cache.items())
            assert counters(clone) == counters(cache) and len(clone) == len(list(clone))
            if hasattr(cache, "evicted"):
                assert clone.evicted == cache.evicted

    @invariant()
    def same_state(self):
        assert list(self.compiled.items()) == list(self.pure.items())  # eviction order included
        assert self.compiled.stats() == self.pure.stats()
        assert len(self.compiled) == len(self.pure)
        assert getattr(self.compiled, "evicted", None) == getattr(self.pure, "evicted", None)


TwinMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_twins_agree = TwinMachine.TestCase


class LRUModelMachine(RuleBasedStateMachine):
    """policy="lru" without TTL is exact LRU: compare with an OrderedDict model."""

    def __init__(self):
        super().__init__()
        self.maxsize = 5
        self.cache = _local_c.LocalCache(self.maxsize)
        self.model = OrderedDict()

    @rule(key=keys, value=values)
    def set(self, key, value):
        self.cache.set(key, value)
        self.model[key] = value
        self.model.move_to_end(key)
        if len(self.model) > self.maxsize:
            self.model.popitem(last=False)

    @rule(key=keys)
    def get(self, key):
        expected = self.model.get(key, "<miss>")
        if key in self.model:
            self.model.move_to_end(key)
        assert self.cache.get(key, "<miss>") == expected

    @rule(key=keys)
    def delete(self, key):
        assert self.cache.delete(key) == (self.model.pop(key, "<miss>") != "<miss>")

    @invariant()
    def same_order(self):
        assert list(self.cache.items()) == list(self.model.items())


LRUModelMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_lru_is_exact = LRUModelMachine.TestCase


def test_get_many_helpers_agree():
    import msgpack

    from tiercache import _local_c, _local_py
    from tiercache.codec import HEADER, MSGPACK, UNPACK_OPTIONS, Codec

    codec = Codec()
    keys = ["plain", "compressed", "int", "corrupt", "absent", "naive", "@odd", b"bytes"]
    blobs = [
        codec.encode({"a": (1, 2)}, b"k", 5_000),
        Codec(compress_threshold=0).encode(["x"] * 50, b"k", None),
        codec.encode(12, b"k", None),
        b"\x10" + bytes(8) + b"\xc1",
        None,
        codec.encode("v", b"k", None),
        codec.encode(b"v", b"k", 1),
        b"",
    ]
    args = (msgpack.Unpacker, UNPACK_OPTIONS, MSGPACK, HEADER.size, 1e12, 30.0)
    found_c, found_py = {}, {}
    result_c = _local_c.decode_reply(keys, blobs, found_c, *args)
    result_py = _local_py.decode_reply(keys, blobs, found_py, *args)
    assert result_c == result_py and found_c == found_py
    assert found_c == {"plain": {"a": (1, 2)}, "naive": "v", "@odd": b"v"}
    assert result_c[1] == [1, 2, 3, 7]  # left for Codec.decode
    base = b"tc:n:"
    assert _local_c.encode_keys(base, keys, repr) == _local_py.encode_keys(base, keys, repr)
    l1_c, l1_py = _local_c.LocalCache(10), _local_py.LocalCache(10)
    fills = result_c[0] + [(4, None, 5.0), (5, "late", -1.0)]
    for l1, fill in ((l1_c, _local_c.fill_l1), (l1_py, _local_py.fill_l1)):
        fill(l1, keys, fills, [True, True, True, True, True, False, True, True], False)
    assert list(l1_c.items()) == list(l1_py.items()) == [("plain", {"a": (1, 2)}), ("@odd", b"v")]


bounds_strategy = st.lists(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=12, unique=True
).map(sorted)
observations = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(-10, 10), max_size=60)


@settings(max_examples=200, deadline=None)
@given(bounds=bounds_strategy, seen=observations)
def test_histograms_agree(bounds, seen):
    from bisect import bisect_left

    compiled, pure = _local_c.Histogram(bounds), _local_py.Histogram(bounds)
    expected = [0] * (len(bounds) + 1)
    for value in seen:
        compiled.observe(value)
        pure.observe(value)
        if value == value:  # NaN is not counted
            expected[bisect_left(bounds, value)] += 1  # le: the first bound >= value
    counts_c, sum_c = compiled.snapshot()
    counts_py, sum_py = pure.snapshot()
    assert counts_c == counts_py == expected
    assert sum_c == sum_py or (math.isnan(sum_c) and math.isnan(sum_py))
    assert compiled.upper_bounds == pure.upper_bounds == tuple(float(b) for b in bounds)


@pytest.mark.parametrize("histogram", [_local_c.Histogram, _local_py.Histogram], ids=["c", "py"])
@pytest.mark.parametrize(
    ("bounds", "error", "match"),
    [
        ([], ValueError, "at least one"),
        ([1, 1], ValueError, "strictly increasing"),
        ([2, 1], ValueError, "strictly increasing"),
        ([1, math.inf], ValueError, "finite"),
        ([math.nan], ValueError, "finite"),
        (["a"], TypeError, "numbers"),
        (None, TypeError, "numbers"),
    ],
)
def test_histogram_refuses_bad_buckets(histogram, bounds, error, match):
    with pytest.raises(error, match=match):
        histogram(bounds)


def test_decode_reply_recovers_after_a_bad_value_in_the_stream():
    """Payloads share one msgpack stream: a value with trailing bytes, a truncated one or a
    corrupt one must not spill into the values after it."""
    import msgpack

    from tiercache.codec import HEADER, MSGPACK, UNPACK_OPTIONS, Codec

    codec = Codec()
    header = bytes([MSGPACK]) + bytes(8)
    good = [codec.encode({"n": n, "t": (n,)}, b"k", None) for n in range(4)]
    blobs = [
        good[0],
        header + msgpack.packb(1) + msgpack.packb(2),  # two values: not ours
        good[1],
        header + msgpack.packb("truncated")[:-3],  # cut short
        good[2],
        header + b"\xc1",  # a byte msgpack never uses
        good[3],
    ]
    keys = [f"k{i}" for i in range(len(blobs))]
    args = (msgpack.Unpacker, UNPACK_OPTIONS, MSGPACK, HEADER.size, 1e12, 30.0)
    for decode_reply in (_local_c.decode_reply, _local_py.decode_reply):
        found = {}
        fills, slow = decode_reply(keys, blobs, found, *args)
        assert slow == [1, 3, 5]
        assert found == {keys[i]: {"n": n, "t": (n,)} for n, i in enumerate((0, 2, 4, 6))}
        assert [index for index, _, _ in fills] == [0, 2, 4, 6]


@pytest.mark.parametrize("fill_l1", [_local_c.fill_l1, _local_py.fill_l1], ids=["c", "py"])
def test_fill_l1_gives_each_entry_its_ttl(fill_l1):
    timer = FakeTimer()
    l1 = (_local_c.LocalCache if fill_l1 is _local_c.fill_l1 else _local_py.LocalCache)(10, timer=timer)
    fill_l1(l1, ["a", "b", "c"], [(0, 1, 5.0), (1, 2, math.inf), (2, 3, 0.5)], [True] * 3, False)
    assert l1.ttl("a") == 5.0 and l1.ttl("b") == math.inf and l1.ttl("c") == 0.5
    timer.advance(0.5)
    assert l1.get("c") is None and l1.get("a") == 1
