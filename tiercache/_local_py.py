"""Pure-Python LocalCache: the readable reference for the compiled csrc/_local.pyx.

Both implementations run the same algorithm on the same data layout, so the hypothesis
tests can demand identical results, stats and eviction order from both:

* Entries live in a slot array. A freed slot goes on a LIFO free list and is reused before
  the array grows. ``_index`` maps a key to its slot (the compiled twin uses its own
  open-addressing table of 32-bit slot numbers instead of a dict).
* Each entry sits in one doubly linked queue, linked by slot numbers. Queue 0 is the LRU
  list (policy "lru") or S3-FIFO's small FIFO; queue 1 is S3-FIFO's main FIFO. New entries go
  in at the head; eviction looks at the tail.
* "lru": a hit relinks the entry to the head; the tail is evicted.
* "s3fifo" (Yang et al., SOSP 2023): a hit only bumps a 2-bit frequency, so reads never
  relink. A new key enters the small FIFO (10% of maxsize) unless its fingerprint is in the
  ghost FIFO, in which case it enters main. Evicting from small moves an entry that was read
  since insertion to main, and otherwise drops it, remembering its fingerprint in the ghost.
  Evicting from main gives each entry with a non-zero frequency another lap (frequency - 1).
* TTL: every entry has an absolute expiry on the cache's timer (inf = never). An expired
  entry is never returned. Each write also advances a sweep cursor a few slots through the
  slot array and reclaims expired entries it finds, so dead entries do not wait for a read.

Concurrency: the compiled twin needs no lock because no Python code runs mid-update; here
every public method holds an RLock instead. Objects an operation releases (evicted, expired,
replaced) are parked in ``_graveyard`` until the structure is consistent again, because a
value's __del__ may call back into the cache. Unlike the compiled twin, this one does not
survive a key whose __hash__ or __eq__ writes to the same cache (the dict runs them
mid-update), nor a key whose __hash__ changes its answer or starts raising (the dict hashes
stored keys again on removal; _remove does that first, so a raise leaves the cache whole). The
timer is read before the structure is looked at, as in the compiled twin, so a timer that
uses the cache cannot leave a stale slot behind.

The instance state lives in __slots__, so an instance has no __dict__ unless a subclass gives
it one: copies and pickles carry a subclass's attributes and nothing internal.
"""

from __future__ import annotations

import functools
import math
import select
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from ._mapping import (
    STATE_VERSION,
    CacheItemsView,
    CacheKeysView,
    CacheValuesView,
    check_state,
    deep_copy,
    reduce,
    restore,
    shallow_copy,
)
from ._validate import Seconds, check_buckets, check_maxsize, check_policy, default_ttl_seconds, slot_limit, ttl_seconds

_LRU, _S3FIFO = 0, 1
_SMALL, _MAIN = 0, 1
_NIL = -1
_MAX_FREQ = 3
SWEEP_STEP = 4  # slots examined per write; keep equal to SWEEP_STEP in csrc/_store.pxi
_MASK64 = (1 << 64) - 1
_MISSING = object()

_P = ParamSpec("_P")
_R = TypeVar("_R")


def fingerprint(key_hash: int) -> int:
    """Mix a Python hash into the 32-bit value both twins store (and S3-FIFO's ghost keeps)."""
    x = key_hash & _MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    return (x >> 32) or 1


def small_capacity(maxsize: int) -> int:
    """Size of S3-FIFO's small queue: 10% of the cache, at least one entry."""
    return max(1, maxsize // 10)


def _locked(method: Callable[Concatenate[LocalCache, _P], _R]) -> Callable[Concatenate[LocalCache, _P], _R]:
    """Run method under the cache's lock, then release what it evicted or replaced."""

    @functools.wraps(method)
    def locked(self: LocalCache, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            finally:
                graveyard = self._graveyard
                while graveyard:  # one at a time: a __del__ may add more
                    graveyard.pop()

    return locked


class _Entry:
    __slots__ = ("key", "value", "expires", "fp", "prev", "next", "freq", "queue")

    def __init__(self, key: Hashable, value: Any, expires: float, fp: int) -> None:
        self.key = key
        self.value = value
        self.expires = expires
        self.fp = fp
        self.prev = _NIL
        self.next = _NIL
        self.freq = 0
        self.queue = _SMALL


# What _import swaps between a cache and the fresh one it built: every slot but the lock, the
# graveyard, the subclass hook and the weakref slot.
_STORAGE = (
    "_maxsize", "_unbounded", "_default_ttl", "_policy", "_timer", "_small_cap", "_ghost_cap",
    "_has_ttl", "hits", "misses", "sets", "deletes", "evictions", "expirations", "_index",
    "_slots", "_free", "_head", "_tail", "_qlen", "_sweep_pos", "_ghost_ring", "_ghost_pos",
    "_ghost_counts",
)  # fmt: skip


class LocalCache(MutableMapping[Hashable, Any]):
    """In-process LRU or S3-FIFO cache with per-entry TTL (pure-Python implementation).

    Subclassable as cachetools' caches are: a subclass's __missing__ answers __getitem__ for
    a missing key, and an overridden popitem() is what a write calls to make room.
    """

    __slots__ = (*_STORAGE, "_lock", "_graveyard", "_popitem_hook", "__weakref__")
    _maxsize: int
    _unbounded: bool
    _default_ttl: float
    _policy: int
    _timer: Callable[[], float] | None
    _small_cap: int
    _ghost_cap: int
    _has_ttl: bool
    _popitem_hook: bool
    hits: int
    misses: int
    sets: int
    deletes: int
    evictions: int
    expirations: int
    _lock: threading.RLock
    _graveyard: list[object]
    _index: dict[Hashable, int]
    _slots: list[_Entry | None]  # None marks a free slot (see _entry)
    _free: list[int]
    _head: list[int]
    _tail: list[int]
    _qlen: list[int]
    _sweep_pos: int
    _ghost_ring: list[int]
    _ghost_pos: int
    _ghost_counts: dict[int, int]

    def __new__(cls, *args: Any, **kwargs: Any) -> LocalCache:
        """A working default cache even before (or without) __init__, as the compiled twin."""
        self = super().__new__(cls)
        self._lock = threading.RLock()
        self._graveyard = []
        self._configure(10_000, None, "lru", None)
        self._zero_counters()
        self._reset_storage()
        self._popitem_hook = cls is not LocalCache and cls.popitem is not LocalCache.popitem
        return self

    def __init__(
        self,
        maxsize: int | float = 10_000,
        ttl: Seconds | None = None,
        policy: str = "lru",
        timer: Callable[[], float] | None = None,
    ) -> None:
        """maxsize: most entries (0 stores nothing, math.inf is unbounded); ttl: the default
        lifetime (None: forever); policy "lru" or "s3fifo"; timer: a clock (seconds).
        On a live cache, __init__ starts it afresh: entries dropped, counters zeroed."""
        with self._lock:
            self._configure(maxsize, ttl, policy, timer)
            self._zero_counters()
            self._graveyard.append(self._slots)  # released once the new storage is in place
            self._reset_storage()
        self._graveyard.clear()

    def _configure(self, maxsize: Any, ttl: Any, policy: Any, timer: Any) -> None:
        """Check every argument, then set them all: a bad one changes nothing."""
        checked = check_maxsize(maxsize)
        default_ttl = default_ttl_seconds(ttl)
        policy_number = check_policy(policy)
        if timer is not None and not callable(timer):
            raise TypeError(f"timer must be a callable returning seconds, got {type(timer).__name__}")
        self._unbounded = checked == math.inf
        self._maxsize = slot_limit(checked)
        self._default_ttl = default_ttl
        self._policy = policy_number
        self._timer = timer
        self._small_cap = small_capacity(self._maxsize)
        self._ghost_cap = max(1, self._maxsize - self._small_cap)
        self._has_ttl = self._default_ttl != math.inf

    def _zero_counters(self) -> None:
        self.hits = self.misses = self.sets = self.deletes = 0
        self.evictions = self.expirations = 0

    def _reset_storage(self) -> None:
        self._index = {}
        # None marks a free slot. A slot reached through _index or a queue link is never
        # free: the `assert entry is not None` lines below say so (to mypy, and to a reader).
        self._slots = []
        self._free = []
        self._head = [_NIL, _NIL]
        self._tail = [_NIL, _NIL]
        self._qlen = [0, 0]
        self._sweep_pos = 0
        self._ghost_ring = []
        self._ghost_pos = 0
        self._ghost_counts = {}

    # -- properties -------------------------------------------------------------------

    @property
    def maxsize(self) -> int | float:
        """Most entries the cache holds: an int, or math.inf when unbounded."""
        return math.inf if self._unbounded else self._maxsize

    @property
    def currsize(self) -> int:
        """len(cache): cachetools' name for the current size (every entry weighs 1)."""
        return len(self._index)

    @staticmethod
    def getsizeof(value: Any) -> int:
        """cachetools' size of one value: always 1 (the cache is bounded in entries)."""
        return 1

    @property
    def default_ttl(self) -> float | None:
        """Seconds an entry lives when set without a ttl; None means forever."""
        return None if self._default_ttl == math.inf else self._default_ttl

    @property
    def policy(self) -> str:
        """Eviction policy: "lru" or "s3fifo"."""
        return ("lru", "s3fifo")[self._policy]

    @property
    def timer(self) -> Callable[[], float] | None:
        """The injected clock, or None for the monotonic clock."""
        return self._timer

    # -- time ---------------------------------------------------------------------------

    def _now(self) -> float:
        if self._timer is None:
            return time.monotonic()
        now = float(self._timer())
        if now != now:
            raise ValueError("timer returned NaN; it must return seconds as a number")
        return now

    def _expires_at(self, ttl: Seconds | None, now: float) -> float:
        seconds = self._default_ttl if ttl is None else ttl_seconds(ttl)
        return now + seconds if seconds != math.inf else math.inf

    # -- queues -------------------------------------------------------------------------

    def _entry(self, slot: int) -> _Entry:
        """The entry in slot, which the caller knows to be occupied."""
        entry = self._slots[slot]
        assert entry is not None
        return entry

    def _link_head(self, slot: int, queue: int) -> None:
        entry = self._entry(slot)
        entry.queue = queue
        entry.prev = _NIL
        entry.next = self._head[queue]
        if entry.next != _NIL:
            following = self._entry(entry.next)
            following.prev = slot
        else:
            self._tail[queue] = slot
        self._head[queue] = slot
        self._qlen[queue] += 1

    def _unlink(self, slot: int) -> None:
        entry = self._entry(slot)
        queue = entry.queue
        if entry.prev != _NIL:
            preceding = self._entry(entry.prev)
            preceding.next = entry.next
        else:
            self._head[queue] = entry.next
        if entry.next != _NIL:
            following = self._entry(entry.next)
            following.prev = entry.prev
        else:
            self._tail[queue] = entry.prev
        self._qlen[queue] -= 1

    def _touch(self, slot: int) -> None:
        if self._policy == _LRU:
            if self._head[_SMALL] != slot:
                self._unlink(slot)
                self._link_head(slot, _SMALL)
        else:
            entry = self._entry(slot)
            if entry.freq < _MAX_FREQ:
                entry.freq += 1

    # -- ghost (S3-FIFO) --------------------------------------------------------------

    def _ghost_add(self, fp: int) -> None:
        if len(self._ghost_ring) < self._ghost_cap:
            self._ghost_ring.append(fp)
        else:
            old = self._ghost_ring[self._ghost_pos]
            left = self._ghost_counts[old] - 1
            if left:
                self._ghost_counts[old] = left
            else:
                del self._ghost_counts[old]
            self._ghost_ring[self._ghost_pos] = fp
        self._ghost_pos = (self._ghost_pos + 1) % self._ghost_cap
        self._ghost_counts[fp] = self._ghost_counts.get(fp, 0) + 1

    # -- storage ------------------------------------------------------------------------

    def _remove(self, slot: int) -> None:
        """Drop the entry in slot and free the slot (callers count why)."""
        entry = self._entry(slot)
        del self._index[entry.key]  # first: it runs the key's __hash__, which may raise
        self._unlink(slot)
        self._slots[slot] = None
        self._free.append(slot)
        self._graveyard.append(entry)

    def _victim(self, now: float) -> int:
        """The slot the policy evicts next (_NIL if empty): LRU's tail; for S3-FIFO, after
        giving entries read since they were queued another lap (which is part of evicting).
        An expired entry met on the way is the victim as it is."""
        if not self._index:
            return _NIL
        if self._policy == _LRU:
            return self._tail[_SMALL]
        while True:
            small_turn = self._qlen[_SMALL] > 0 and (self._qlen[_SMALL] >= self._small_cap or self._qlen[_MAIN] == 0)
            slot = self._tail[_SMALL if small_turn else _MAIN]
            entry = self._entry(slot)
            if entry.expires <= now or entry.freq == 0:
                return slot
            self._unlink(slot)
            entry.freq = 0 if small_turn else entry.freq - 1
            self._link_head(slot, _MAIN)

    def _evict(self, slot: int, now: float) -> None:
        """Remove the victim, counting an expiry or an eviction (S3-FIFO remembers a live
        entry evicted from small in its ghost)."""
        entry = self._entry(slot)
        if entry.expires <= now:
            self.expirations += 1
        else:
            if self._policy == _S3FIFO and entry.queue == _SMALL:
                self._ghost_add(entry.fp)
            self.evictions += 1
        self._remove(slot)

    def _sweep(self, now: float) -> None:
        top = len(self._slots)
        for _ in range(SWEEP_STEP):
            if top == 0:
                return
            if self._sweep_pos >= top:
                self._sweep_pos = 0
            entry = self._slots[self._sweep_pos]
            if entry is not None and entry.expires <= now:
                self._remove(self._sweep_pos)
                self.expirations += 1
            self._sweep_pos += 1

    def _store(self, key: Hashable, fp: int, value: Any, expires: float, now: float) -> None:
        if expires != math.inf:
            self._has_ttl = True
        if self._has_ttl:
            self._sweep(now)  # first, so the slots it frees can take this entry
        slot = self._index.get(key)
        if slot is not None:
            entry = self._entry(slot)
            self._graveyard.append(entry.value)
            entry.value = value
            entry.expires = expires
            self._touch(slot)
        elif self._maxsize == 0:
            self.evictions += 1  # a cache of size 0 stores nothing: the entry goes at once
        else:
            queue = _MAIN if self._policy == _S3FIFO and fp in self._ghost_counts else _SMALL
            self._insert(key, fp, value, expires, now, queue, 0)
        self.sets += 1

    def _insert(self, key: Hashable, fp: int, value: Any, expires: float, now: float, queue: int, freq: int) -> None:
        """Put a key known to be absent at the head of queue, evicting first if full."""
        if len(self._index) >= self._maxsize:
            self._evict(self._victim(now), now)
        entry = _Entry(key, value, expires, fp)
        entry.freq = freq
        if self._free:
            slot = self._free.pop()
            self._slots[slot] = entry
        else:
            slot = len(self._slots)
            self._slots.append(entry)
        self._index[key] = slot
        self._link_head(slot, queue)

    def _live_slot(self, key: Hashable, now: float | None) -> int | None:
        """The slot of key if present and not expired (no stats, no reordering). now is None
        when the caller has not read the clock: it is then read here, before the lookup."""
        if now is None:
            now = self._now() if self._has_ttl else math.nan
        slot = self._index.get(key)
        if slot is None or self._entry(slot).expires <= now:
            return None
        return slot

    # -- reads --------------------------------------------------------------------------

    @_locked
    def _get(self, key: Hashable, default: Any) -> Any:
        now = self._now() if self._has_ttl else math.nan  # first: the timer may use the cache
        slot = self._index.get(key)
        if slot is not None:
            entry = self._entry(slot)
            if not entry.expires <= now:
                self.hits += 1
                self._touch(slot)
                return entry.value
            self._remove(slot)
            self.expirations += 1
        self.misses += 1
        return default

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value for key, or default when it is absent or expired (counts a hit or miss)."""
        return self._get(key, default)

    def __getitem__(self, key: Hashable) -> Any:
        value = self._get(key, _MISSING)
        if value is _MISSING:
            missing = getattr(type(self), "__missing__", None)
            if missing is None:
                raise KeyError(key)
            return missing(self, key)
        return value

    @_locked
    def __contains__(self, key: object) -> bool:
        return self._live_slot(key, None) is not None

    @_locked
    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, Any]:
        """A dict of the keys that are present and live, with their values."""
        found: dict[Hashable, Any] = {}
        for key in keys:
            value = self._get(key, _MISSING)
            if value is not _MISSING:
                found[key] = value
        return found

    @_locked
    def peek(self, key: Hashable, default: Any = None) -> Any:
        """The value for key without counting a hit or changing its eviction order."""
        slot = self._live_slot(key, None)
        if slot is None:
            return default
        entry = self._entry(slot)
        return entry.value

    @_locked
    def ttl(self, key: Hashable) -> float | None:
        """Seconds key has left; math.inf if it never expires; None if it is absent."""
        now = self._now()
        slot = self._live_slot(key, now)
        if slot is None:
            return None
        entry = self._entry(slot)
        return math.inf if entry.expires == math.inf else entry.expires - now

    def __len__(self) -> int:
        """Entries held, counting expired ones not yet reclaimed (as cachetools does);
        evict_expired() reclaims them. Iteration yields live entries only."""
        return len(self._index)

    def _queue_order(self) -> Iterator[_Entry]:
        """Entries in eviction order: tail to head of the small (or LRU) queue, then main."""
        for queue in (_SMALL, _MAIN):
            slot = self._tail[queue]
            while slot != _NIL:
                entry = self._entry(slot)
                yield entry
                slot = entry.prev

    @_locked
    def _snapshot(self, what: int) -> list[Any]:
        """Live entries in eviction order: keys (0), values (1) or (key, value) pairs (2)."""
        now = self._now() if self._has_ttl else math.nan
        live = [e for e in self._queue_order() if not e.expires <= now]
        if what == 0:
            return [e.key for e in live]
        if what == 1:
            return [e.value for e in live]
        return [(e.key, e.value) for e in live]

    def __iter__(self) -> Iterator[Hashable]:
        """Live keys, least recently used (next to be evicted) first, over a snapshot."""
        return iter(self._snapshot(0))

    def __reversed__(self) -> Iterator[Hashable]:
        """Live keys, most recently used first, over a snapshot."""
        return iter(self._snapshot(0)[::-1])

    def keys(self) -> CacheKeysView:
        """A set-like view of the live keys, in eviction order (each iteration a snapshot)."""
        return CacheKeysView(self)

    def values(self) -> CacheValuesView:
        """A view of the live values, in eviction order (each iteration a snapshot)."""
        return CacheValuesView(self)

    def items(self) -> CacheItemsView:
        """A set-like view of the live (key, value) pairs, in eviction order."""
        return CacheItemsView(self)

    # -- writes -------------------------------------------------------------------------

    @_locked
    def set(self, key: Hashable, value: Any, ttl: Seconds | None = None) -> None:
        """Store value under key; ttl in seconds, None for the cache default, inf for never."""
        now = self._now() if ttl is not None or self._has_ttl else math.nan
        expires = self._expires_at(ttl, now)
        fp = fingerprint(hash(key))
        if self._popitem_hook:
            self._make_room(key)
        self._store(key, fp, value, expires, now)

    def _make_room(self, key: Hashable) -> None:
        """For a subclass that overrides popitem(): call it until a new key fits, as
        cachetools' __setitem__ does (an override that frees nothing is left to the policy)."""
        while self._maxsize and len(self._index) >= self._maxsize and key not in self._index:
            before = len(self._index)
            try:
                self.popitem()
            except KeyError:  # only expired entries were left, and popitem reclaimed them
                break
            if len(self._index) >= before:
                break

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    @_locked
    def set_many(self, mapping: Mapping[Any, Any] | Iterable[tuple[Hashable, Any]], ttl: Seconds | None = None) -> None:
        """Store every pair; nothing is stored if any key is unhashable or ttl is invalid."""
        pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
        now = self._now() if ttl is not None or self._has_ttl else math.nan
        expires = self._expires_at(ttl, now)
        fps = [fingerprint(hash(key)) for key, _ in pairs]
        for (key, value), fp in zip(pairs, fps, strict=True):
            if self._popitem_hook:
                self._make_room(key)
            self._store(key, fp, value, expires, now)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Like dict.update: every pair is stored with the cache's default ttl."""
        self.set_many(other)
        if kwargs:
            self.set_many(kwargs)

    @_locked
    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        """The live value for key; if absent, store default and return it."""
        value = self._get(key, _MISSING)
        if value is _MISSING:
            self.set(key, default)
            return default
        return value

    @_locked
    def delete(self, key: Hashable) -> bool:
        """Remove key; True if a live entry was removed."""
        now = self._now() if self._has_ttl else math.nan
        slot = self._index.get(key)
        if slot is None:
            return False
        entry = self._entry(slot)
        live = not entry.expires <= now
        self._remove(slot)
        if live:
            self.deletes += 1
        else:
            self.expirations += 1
        return live

    def __delitem__(self, key: Hashable) -> None:
        if not self.delete(key):
            raise KeyError(key)

    @_locked
    def delete_many(self, keys: Iterable[Hashable]) -> int:
        """Remove every key given; the number of live entries removed."""
        keys = list(keys)
        for key in keys:
            hash(key)
        return sum(self.delete(key) for key in keys)

    @_locked
    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove key and return its value (counts as a get and a delete)."""
        value = self._get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.delete(key)
        return value

    @_locked
    def popitem(self) -> tuple[Hashable, Any]:
        """Evict and return the entry the policy would evict next (counted as an eviction;
        S3-FIFO first gives recently read entries another lap, as an eviction does).
        Expired entries met on the way are reclaimed. KeyError if nothing live is left."""
        now = self._now() if self._has_ttl else math.nan
        while True:
            slot = self._victim(now)
            if slot == _NIL:
                raise KeyError("popitem(): cache is empty")
            entry = self._entry(slot)
            if entry.expires <= now:
                del entry  # so the graveyard, not this frame, releases it (the twins' order)
                self._evict(slot, now)
                continue
            key, value = entry.key, entry.value
            del entry
            self._evict(slot, now)
            return key, value

    @_locked
    def expire(self, key: Hashable, ttl: Seconds | None) -> bool:
        """Give key a new ttl from now (None: the cache default); False if it is absent."""
        now = self._now()
        expires = self._expires_at(ttl, now)
        slot = self._live_slot(key, now)
        if slot is None:
            return False
        entry = self._entry(slot)
        entry.expires = expires
        if expires != math.inf:
            self._has_ttl = True
        return True

    @_locked
    def evict_expired(self) -> int:
        """Reclaim every expired entry now; the number reclaimed."""
        now = self._now()
        reclaimed = 0
        for slot, entry in enumerate(self._slots):
            if entry is not None and entry.expires <= now:
                self._remove(slot)
                reclaimed += 1
        self.expirations += reclaimed
        return reclaimed

    @_locked
    def clear(self) -> None:
        """Drop every entry (and S3-FIFO's ghost); counters keep their totals."""
        self._graveyard.append(self._slots)  # released once the new storage is in place
        self._reset_storage()

    def _after_fork(self) -> None:
        """In a forked child, before anything else touches the cache: a new lock (a parent
        thread may have held the old one when the process forked), and counters from zero
        (the parent counted what came before). Entries stay: clear() drops them."""
        self._lock = threading.RLock()
        self._graveyard = []
        self.hits = self.misses = self.sets = self.deletes = 0
        self.evictions = self.expirations = 0

    # -- introspection ------------------------------------------------------------------

    @_locked
    def stats(self) -> dict[str, int | float]:
        """Counters since creation, with the current size and maxsize."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "deletes": self.deletes,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "size": len(self._index),
            "maxsize": self.maxsize,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(maxsize={self.maxsize}, size={len(self)}, policy={self.policy!r})"

    # -- copies and pickles (tiercache/_mapping.py holds what both twins share) -------

    @_locked
    def _export(self, relative: bool, ghost: bool) -> tuple[Any, ...]:
        """The whole state as a plain tuple (_mapping.STATE_VERSION describes it). Unlike
        the compiled twin's, not proof against a finalizer that changes the cache while the
        tuples are built (the module docstring says what this twin does not survive)."""
        now = self._now()
        live = [e for e in self._queue_order() if not e.expires <= now]
        ring, start = list(self._ghost_ring), self._ghost_pos if len(self._ghost_ring) == self._ghost_cap else 0
        settings = (self.maxsize, self.default_ttl, self.policy, self._timer)
        counters = (self.hits, self.misses, self.sets, self.deletes, self.evictions, self.expirations)
        entries = [
            (e.key, e.value, e.expires - now if relative and e.expires != math.inf else e.expires, e.freq, e.queue)
            for e in live
        ]
        ghost_fps = [ring[(start + i) % len(ring)] for i in range(len(ring))] if ghost else []
        return (STATE_VERSION, *settings, relative, entries, counters, ghost_fps)

    def _import(self, state: tuple[Any, ...]) -> None:
        """Replace everything with an _export()ed state, or raise and change nothing: the
        state is built in a fresh cache, and only a whole one is swapped in."""
        fresh = LocalCache.__new__(LocalCache)
        fresh._load(check_state(state))
        with self._lock:
            for name in _STORAGE:
                mine = getattr(self, name)
                setattr(self, name, getattr(fresh, name))
                setattr(fresh, name, mine)
        # fresh now holds the old entries; releasing it may run finalizers, which is safe

    def _load(self, fields: tuple[Any, ...]) -> None:
        """_import's work, into this (fresh, private) cache."""
        _, maxsize, ttl, policy, timer, relative, entries, counters, ghost_fps = fields
        # every __hash__ and float() first
        keyed = [(fingerprint(hash(key)), key, value, float(expiry), *rest) for key, value, expiry, *rest in entries]
        self._configure(maxsize, ttl, policy, timer)
        now = self._now()
        for fp, key, value, expiry, freq, queue in keyed:
            expires = expiry + now if relative and expiry != math.inf else expiry
            if expires != math.inf:
                self._has_ttl = True
            slot = self._index.get(key)  # a key twice in a hand-made state: the last one wins
            if slot is not None:
                self._remove(slot)
            if self._maxsize:
                self._insert(key, fp, value, expires, now, _MAIN if self._policy == _S3FIFO and queue else _SMALL, freq)
        if self._policy == _S3FIFO:
            for fp in ghost_fps:
                self._ghost_add(fp)
        self.hits, self.misses, self.sets, self.deletes, self.evictions, self.expirations = counters
        self._graveyard.clear()

    def __setstate__(self, state: tuple[Any, Any]) -> None:
        restore(self, state)

    def __reduce__(self) -> tuple[Any, ...]:
        return reduce(self)

    def __copy__(self) -> LocalCache:
        return shallow_copy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> LocalCache:
        return deep_copy(self, memo)


class L1Gate:
    """Whether a tiered cache's L1 may serve and store; shut while invalidation is unhealthy."""

    __slots__ = ("open", "bypassed")

    def __init__(self) -> None:
        self.open = True
        self.bypassed = 0  # reads that skipped L1 while it was shut


class TieredFront:
    """The L1 fast path of TieredCache (the compiled twin answers a hit without a frame).

    Subclasses provide _get_slow(key, default, model) for everything else: a miss, a key of
    the wrong type, model=, or an L1 shut while invalidation is unhealthy.
    """

    _l1: LocalCache
    _path: tuple[str, ...] | None
    _gate: L1Gate

    def _bind_l1(self, l1: LocalCache, path: tuple[str, ...] | None, gate: L1Gate) -> None:
        self._l1 = l1
        self._path = path
        self._gate = gate

    if TYPE_CHECKING:  # for the type checker only; subclasses define it (nor does the compiled twin)

        def _get_slow(self, key: Any, default: Any, model: Any) -> Any:
            """Everything get() does not answer from L1 (provided by the subclass)."""

    @property
    def l1_enabled(self) -> bool:
        """False while the L1 is shut (it then neither serves nor stores)."""
        return self._gate.open

    def get(self, key: Any, default: Any = None, model: Any = None) -> Any:
        """The value for key from L1, else Redis, else the loader; default on a miss."""
        if model is None:  # with a model, the slow path looks in L1 (and counts) itself
            if self._gate.open:
                if type(key) is str or type(key) is bytes:
                    value = self._l1._get(key if self._path is None else (self._path, key), _MISSING)
                    if value is not _MISSING:
                        return value
            else:
                self._gate.bypassed += 1
        return self._get_slow(key, default, model)

    def _l1_get(self, key: Any) -> Any:
        """The L1 value of key, or MISSING (for the async front)."""
        if not self._gate.open:
            self._gate.bypassed += 1
        elif type(key) is str or type(key) is bytes:
            return self._l1._get(key if self._path is None else (self._path, key), _MISSING)
        return _MISSING

    def _l1_get_many(self, keys: Iterable[Any], found: dict[Any, Any]) -> list[Any]:
        """_l1_get for every key: hits go into found, the rest come back as a list."""
        missing = []
        for key in keys:
            value = self._l1_get(key)
            if value is _MISSING:
                missing.append(key)
            else:
                found[key] = value
        return missing


class Histogram:
    """Observations counted in fixed buckets, with their sum (Prometheus histogram data).

    The compiled twin's observe() is one C call, atomic under the GIL. This one is a few
    bytecodes with no call in between, so CPython does not switch threads inside it; it is
    the fallback, not the hot path, either way.
    """

    __slots__ = ("upper_bounds", "_counts", "_total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.upper_bounds = check_buckets(bounds)
        self._counts = [0] * (len(self.upper_bounds) + 1)
        self._total = 0.0

    def observe(self, value: float) -> None:
        """Count value in the first bucket whose bound is >= value (NaN is ignored)."""
        if value != value:
            return
        self._counts[bisect_left(self.upper_bounds, value)] += 1
        self._total += value

    def snapshot(self) -> tuple[list[int], float]:
        """(counts per bucket, the last one past every bound, and the sum)."""
        return list(self._counts), self._total


MISSING = _MISSING


def decode_reply(
    missing: list[Any],
    blobs: list[Any],
    found: dict[Any, Any],
    make_unpacker: Callable[..., Any],
    unpack_kwargs: dict[str, Any],
    format_byte: int,
    header_size: int,
    now_ms: float,
    l1_ttl: float,
) -> tuple[list[tuple[int, Any, float]], list[int]]:
    """The per-key loop of get_many, for values in the plain msgpack format.

    Puts each decoded value in found (under its key from missing) and returns
    (fills, slow): fills lists (index, value, l1_ttl) for L1, slow the indices the caller
    must decode itself (other formats, or bytes that did not decode). The header is a
    format byte and a big-endian 8-byte deadline in unix ms (tiercache/codec.py). Payloads
    go through one make_unpacker(**unpack_kwargs) stream (msgpack.Unpacker): the options
    are parsed once per reply, not once per value.
    """
    fills: list[tuple[int, Any, float]] = []
    slow: list[int] = []
    unpacker = None
    for index, data in enumerate(blobs):
        if data is None:
            continue
        if type(data) is not bytes or len(data) <= header_size or data[0] != format_byte:
            slow.append(index)
            continue
        deadline = int.from_bytes(data[1:9], "big")
        if unpacker is None:
            unpacker, consumed = make_unpacker(**unpack_kwargs), 0
        try:
            unpacker.feed(data[header_size:])
            consumed += len(data) - header_size
            value = unpacker.unpack()
            if unpacker.tell() != consumed:
                raise ValueError("more than one value")
        except Exception:  # not one whole value: the rest of the stream is garbage, start anew
            slow.append(index)
            unpacker = None
            continue
        found[missing[index]] = value
        ttl = l1_ttl if deadline == 0 else min(l1_ttl, (deadline - now_ms) / 1000.0)
        fills.append((index, value, ttl))
    return fills, slow


def encode_keys(base: bytes, keys: list[Any], slow: Callable[[Any], bytes]) -> list[bytes]:
    """[base + key as UTF-8 for each key]: the batch form of KeyCodec.redis_key. Keys that
    need more than that (bytes, a leading "@" or "%", lone surrogates, other types) go
    through slow(key)."""
    out = []
    for key in keys:
        if type(key) is str and key[:1] not in ("@", "%"):
            try:
                out.append(base + key.encode("utf-8"))
                continue
            except UnicodeEncodeError:
                pass
        out.append(slow(key))
    return out


def fill_l1(
    l1: LocalCache,
    l1_keys: list[Any],
    fills: list[tuple[int, Any, float]],
    allowed: list[bool],
    cache_none: bool,
) -> None:
    """Put the (index, value, ttl) fills whose index is allowed into l1."""
    for index, value, ttl in fills:
        if allowed[index] and ttl > 0 and (value is not None or cache_none):
            l1.set(l1_keys[index], value, ttl)


# -- drop_echoes: the sync subscriber's wait (csrc/_echo.pxi explains it; this twin keeps the
# GIL, so it saves the parse of an echo but not the thread's wake-ups) ------------------------

ECHO_NOTHING, ECHO_ONLY, ECHO_OTHER, ECHO_LOST = 0, 1, 2, 3
PEEK_BYTES = 8192
_ECHO_HEAD = b"3\r\n$7\r\nmessage\r\n$"


def _number(data: bytes, pos: int) -> tuple[int, int]:
    """The decimal number and CRLF at pos: (value, position after them), or (-1, -1)."""
    start = pos
    while pos < len(data) and 48 <= data[pos] <= 57:
        if pos - start >= 9:
            return -1, -1
        pos += 1
    if pos == start or data[pos : pos + 2] != b"\r\n":
        return -1, -1
    return int(data[start:pos]), pos + 2


def echo_frame_length(data: bytes, marker: bytes) -> int:
    """The length of the echo frame data starts with, or -1."""
    if len(data) < 18 or data[0] not in b"*>" or data[1:18] != _ECHO_HEAD:
        return -1
    size, pos = _number(data, 18)  # the channel
    if pos < 0 or pos + size + 3 > len(data):
        return -1
    pos += size
    if data[pos : pos + 3] != b"\r\n$":
        return -1
    size, pos = _number(data, pos + 3)  # the data
    if pos < 0 or size < len(marker) or pos + size + 2 > len(data):
        return -1
    if data[pos : pos + len(marker)] != marker or data[pos + size : pos + size + 2] != b"\r\n":
        return -1
    return pos + size + 2


def drop_echoes(sock: socket.socket, marker: bytes, timeout: float, linger: float = 0.0) -> int:
    """Wait up to timeout seconds for the subscriber socket to hold something other than
    echoes of this cache's own messages, consuming the echoes that arrive meanwhile and
    pausing linger seconds after each batch of them."""
    fd = sock.fileno()
    if fd < 0 or not marker:
        return ECHO_OTHER
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    outcome = ECHO_NOTHING
    while True:
        wait_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        events = poller.poll(wait_ms)
        if not events:
            return outcome
        if not events[0][1] & select.POLLIN:
            return ECHO_OTHER
        try:
            peeked = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError, TimeoutError):
            continue
        except OSError:
            return ECHO_OTHER
        consumed = 0
        while (length := echo_frame_length(peeked[consumed:], marker)) >= 0:
            consumed += length
        if consumed == 0:
            return ECHO_OTHER
        try:
            taken = len(sock.recv(consumed, socket.MSG_DONTWAIT))
        except OSError:
            taken = -1
        if taken != consumed:
            return ECHO_LOST
        if consumed < len(peeked):
            return ECHO_OTHER
        outcome = ECHO_ONLY
        if linger > 0:
            time.sleep(min(linger, max(0.0, deadline - time.monotonic())))
