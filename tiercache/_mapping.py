"""What makes both LocalCache twins a faithful MutableMapping and a cachetools drop-in: the
keys/values/items views, copying and pickling. Shared so the twins cannot drift apart.

Each twin provides two methods this module builds on:

* ``_snapshot(what)``: the live entries in eviction order, as a list of keys (0), values (1)
  or (key, value) pairs (2), taken without running Python code mid-walk.
* ``_export(relative, ghost)`` and ``_import(state)``: the cache's whole state as a plain
  tuple (see STATE_VERSION) and back.

Copies (copy.copy, copy.deepcopy) keep the timer, the absolute expiries on it, the eviction
order, S3-FIFO's queue and frequency of every entry, its ghost, and the counters. Pickles
keep the same except that expiries travel as remaining seconds (re-based on the receiving
cache's clock, since a monotonic clock means nothing in another process) and the ghost is
dropped (it holds fingerprints of str hashes, which differ between processes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, ClassVar, Protocol, TypeVar

# (STATE_VERSION, maxsize, ttl, policy, timer, relative, entries, counters, ghost) where
# entries lists (key, value, expiry, freq, queue) oldest first (eviction order), expiry
# being absolute on the timer or, if relative, seconds left (math.inf: never).
STATE_VERSION = 1

_T = TypeVar("_T", bound="Exportable")


class Exportable(Protocol):
    """The part of a LocalCache twin this module uses."""

    def _snapshot(self, what: int) -> list[Any]: ...

    def _export(self, relative: bool, ghost: bool) -> tuple[Any, ...]: ...

    def _import(self, state: tuple[Any, ...]) -> None: ...


class _Snapshots:
    """What the three views share: each iteration walks a snapshot of the live entries
    (the cache's _snapshot(what)), so the cache may change while it runs."""

    _mapping: Any
    _what: ClassVar[int]  # 0 keys, 1 values, 2 (key, value) pairs

    def __iter__(self) -> Iterator[Any]:
        snapshot: list[Any] = self._mapping._snapshot(self._what)
        return iter(snapshot)

    def __reversed__(self) -> Iterator[Any]:
        snapshot: list[Any] = self._mapping._snapshot(self._what)
        return iter(snapshot[::-1])


class CacheKeysView(_Snapshots, KeysView[Hashable]):
    """Live keys in eviction order; set-like (``cache.keys() & {...}``)."""

    _what = 0


class CacheValuesView(_Snapshots, ValuesView[Any]):
    """Live values in eviction order."""

    _what = 1

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self._mapping._snapshot(1))


class CacheItemsView(_Snapshots, ItemsView[Hashable, Any]):
    """Live (key, value) pairs in eviction order; set-like. Neither iterating nor ``in``
    counts a hit or reorders an entry."""

    _what = 2

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        missing = object()
        found = self._mapping.peek(key, missing)
        return found is not missing and (found is value or found == value)


def instance_dict(cache: object) -> dict[str, Any] | None:
    """A subclass instance's own attributes (None when it has none)."""
    return getattr(cache, "__dict__", None) or None


def restore(cache: Any, state: tuple[Any, Any]) -> None:
    """__setstate__ for both twins: the cache's state, then a subclass's attributes."""
    if not isinstance(state, tuple) or len(state) != 2:
        raise TypeError("LocalCache state must be a (cache state, attributes) pair")
    core, attributes = state
    cache._import(core)
    if attributes:
        cache.__dict__.update(attributes)


def rebuild(cls: type[_T]) -> _T:
    """An unpickled cache before __setstate__: made by __new__, never __init__ (whose
    signature a subclass may have changed)."""
    return cls.__new__(cls)


def reduce(cache: Any) -> tuple[Callable[..., Any], tuple[Any, ...], tuple[Any, Any]]:
    """__reduce__ for both twins: rebuild(), then __setstate__ restores everything."""
    return rebuild, (type(cache),), (cache._export(True, False), instance_dict(cache))


def shallow_copy(cache: _T) -> _T:
    """__copy__: the same entries (the same key and value objects) in independent storage."""
    cls = type(cache)
    twin = cls.__new__(cls)
    attributes = instance_dict(cache)
    restore(twin, (cache._export(False, True), dict(attributes) if attributes else None))
    return twin


def deep_copy(cache: _T, memo: dict[int, Any]) -> _T:
    """__deepcopy__: keys, values and a subclass's attributes deep-copied, the timer shared
    (a copy on another clock would not keep the remaining TTLs)."""
    cls = type(cache)
    twin = cls.__new__(cls)
    memo[id(cache)] = twin  # a value that refers back to its cache refers to the copy
    core = list(cache._export(False, True))
    pairs = copy.deepcopy([(key, value) for key, value, *_ in core[6]], memo)
    core[6] = [(key, value, *rest) for (key, value), (_, _, *rest) in zip(pairs, core[6], strict=True)]
    attributes = copy.deepcopy(instance_dict(cache), memo)
    restore(twin, (tuple(core), attributes))
    return twin


def check_state(state: Any) -> tuple[Any, ...]:
    """The fields of an _export()ed state, or a clear error for anything else (a pickle from
    another version, or a hand-made state). The lists are copied before they are checked, so
    a key's __hash__ run later cannot slip an unchecked entry in."""
    if not isinstance(state, tuple) or len(state) != 9 or state[0] != STATE_VERSION:
        raise ValueError(f"not a LocalCache state of version {STATE_VERSION}")
    try:
        entries = [tuple(entry) for entry in state[6]]
        counters, ghost = tuple(state[7]), list(state[8])
    except TypeError as exc:
        raise ValueError("LocalCache state: entries, counters and ghost must be sequences") from exc
    if not all(
        len(entry) == 5
        and isinstance(entry[2], (int, float))
        and entry[2] == entry[2]  # not NaN
        and entry[3] in (0, 1, 2, 3)
        and entry[4] in (0, 1)
        for entry in entries
    ):
        raise ValueError("LocalCache state: entries must be (key, value, expiry, freq 0-3, queue 0-1)")
    if len(counters) != 6 or not all(isinstance(n, int) and 0 <= n < 2**64 for n in counters):
        raise ValueError("LocalCache state: counters must be 6 non-negative ints")
    if not all(isinstance(fp, int) and 0 < fp < 2**32 for fp in ghost):
        raise ValueError("LocalCache state: the ghost must list 32-bit fingerprints")
    return (*state[:6], entries, counters, ghost)
