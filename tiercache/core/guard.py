"""The fill guard: the one owner of every change a tiered cache makes to its L1.

Invariant 2 (shared/DESIGN.md) lives here: L1 never holds a value read from Redis before an
invalidation of its key that this process had already received. Reads take a token before
they ask Redis; writes and invalidations bump a sequence number and are remembered in a
bounded log; a fill whose key changed after its token is dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..local import L1Gate, LocalCache, fill_l1


class FillGuard:
    """Every change a tiered cache makes to its L1 goes through here, under one lock.

    Every invalidation (a local write, a message from another process, a flush) takes the
    next sequence number and is remembered in a bounded log. A read takes a token (the
    current number) before it asks Redis; its fill is stored only if nothing invalidated
    its key, and nothing flushed, after the token. Deciding and storing happen under the
    lock that invalidations also take, so an invalidation is either seen by the decision or
    applied after the store. If the log has forgotten what came after a token, the fill is
    dropped: the guard errs toward a miss, never toward a stale value.

    A write invalidates its keys when it starts and when it ends, so a read that overlaps a
    write in any way is dropped; the write's own value goes into L1 only if no other write
    to the key was in flight meanwhile (their order in Redis is unknown here).

    While the gate is shut (invalidation unhealthy) nothing is stored at all.
    """

    def __init__(self, l1: LocalCache, gate: L1Gate, history: int = 1024) -> None:
        self.l1 = l1
        self.gate = gate
        self._lock = threading.RLock()  # RLock: a value's __del__ may come back in
        self._seq = 0
        self._log: deque[tuple[int, Any]] = deque(maxlen=history)  # (seq, keys or _FLUSH)
        self._writes: dict[Any, int] = {}
        self._held: set[Any] = set()  # keys L1 must not store until released (repairs)
        self.dropped = 0

    def after_fork(self) -> None:
        """In a forked child: a new lock (a parent thread may have held the old one), no
        writes in flight or held (they were the parent's), and every fill begun before dropped."""
        self._lock = threading.RLock()
        self._writes.clear()
        self._held.clear()
        self.dropped = 0
        self._record(_FLUSH)

    def begin_read(self) -> int:
        return self._seq

    def fill(self, key: Any, token: int, value: Any, ttl: float) -> bool:
        """Store a value read (or loaded) under token, unless it may be stale."""
        with self._lock:
            if not self.gate.open or key in self._held:
                return False
            if self._seq != token and key in self._changed_since(token):
                self.dropped += 1
                return False
            self.l1.set(key, value, ttl)
            return True

    def fill_many(self, keys: list[Any], token: int, fills: list[tuple[int, Any, float]], cache_none: bool) -> None:
        """fill for a batch: fills are (index into keys, value, ttl)."""
        with self._lock:
            if not self.gate.open or not fills:
                return
            if self._seq == token and not self._held:
                allowed = [True] * len(keys)
            else:
                changed = () if self._seq == token else self._changed_since(token)
                allowed = [key not in changed for key in keys]
                self.dropped += sum(1 for index, _, _ in fills if not allowed[index])
                if self._held:
                    allowed = [ok and key not in self._held for ok, key in zip(allowed, keys, strict=True)]
            fill_l1(self.l1, keys, fills, allowed, cache_none)

    def begin_writes(self, keys: list[Any], drop: bool = False) -> int:
        """Start a write of keys: fills of reads begun before now are dropped, and with drop
        (a delete) so are the keys' L1 values, so nobody reads them meanwhile."""
        with self._lock:
            for key in keys:
                self._writes[key] = self._writes.get(key, 0) + 1
            self._record(tuple(keys))
            if drop:
                for key in keys:
                    self.l1.delete(key)
            return self._seq

    def end_writes(self, keys: list[Any], token: int, values: list[Any] | None, ttl: float, ok: bool) -> None:
        """Finish a write: keep each new value in L1 if it is safe to, else drop the key."""
        with self._lock:
            changed = () if self._seq == token else self._changed_since(token)
            store = values if ok and ttl > 0 and self.gate.open else None
            for index, key in enumerate(keys):
                if store is not None and self._writes[key] == 1 and key not in changed and key not in self._held:
                    self.l1.set(key, store[index], ttl)
                else:
                    self.l1.delete(key)
            self._record(tuple(keys))
            for key in keys:
                left = self._writes[key] - 1
                if left:
                    self._writes[key] = left
                else:
                    del self._writes[key]

    def hold(self, keys: list[Any]) -> None:
        """Drop keys from L1 and store none of them until release() (a repair is pending)."""
        with self._lock:
            self._record(tuple(keys))
            self._held.update(keys)
            for key in keys:
                self.l1.delete(key)

    def release(self, keys: list[Any]) -> None:
        """L1 may store these keys again."""
        with self._lock:
            self._held.difference_update(keys)

    def invalidate(self, keys: Iterable[Any]) -> None:
        """keys changed elsewhere: drop them from L1, and fills of reads begun before now."""
        keys = tuple(keys)
        with self._lock:
            self._record(keys)
            for key in keys:
                self.l1.delete(key)

    def flush(self, scope: tuple[str, ...] = ()) -> None:
        """Everything (or everything in a namespace) changed: empty it, drop every fill."""
        with self._lock:
            self._record(_FLUSH)
            if not scope:
                self.l1.clear()
                return
            for key in list(self.l1):
                if type(key) is tuple and key[0][: len(scope)] == scope:
                    self.l1.delete(key)

    def drop_where(self, matches: Callable[[Any], bool]) -> None:
        """Keys changed by a bulk delete: drop the L1 keys matches(key) says, and every fill
        begun before now (which keys its reads were for is not worth telling apart)."""
        with self._lock:
            self._record(_FLUSH)
            for key in list(self.l1):
                if matches(key):
                    self.l1.delete(key)

    def shut(self) -> None:
        """Stop serving and storing (and empty L1) until reopen()."""
        with self._lock:
            self.gate.open = False
            self._record(_FLUSH)
            self.l1.clear()

    def reopen(self) -> None:
        """Serve again, from an empty L1 (what it held may have missed invalidations)."""
        with self._lock:
            self._record(_FLUSH)
            self.l1.clear()
            self.gate.open = True

    def _record(self, keys: Any) -> None:
        self._seq += 1
        self._log.append((self._seq, keys))

    def _changed_since(self, token: int) -> Any:
        """The keys invalidated after token, or _EVERYTHING (flushed, or the log forgot)."""
        log = self._log
        if not log or log[0][0] > token + 1:
            return _EVERYTHING
        changed: set[Any] = set()
        for seq, keys in reversed(log):
            if seq <= token:
                break
            if keys is _FLUSH:
                return _EVERYTHING
            changed.update(keys)
        return changed


class _Everything:
    def __contains__(self, key: Any) -> bool:
        return True


_FLUSH: Any = object()
_EVERYTHING = _Everything()
