"""Repairs: writes the source of truth took but Redis may have missed (invariant 9).

With a writer, set/delete change the source of truth first; if the Redis write then fails
(no answer, an error reply, a cancelled call), Redis may keep the old value for the rest of
its TTL and every process would read it. Such keys are scheduled here: this process serves
no copy of them (the fill guard holds them), and the next operation that finds Redis
answering first deletes them in Redis and publishes their invalidation (plans.repair), so
every process reloads from the source of truth. A successful write of a key repairs it too.

What is lost if the process dies first: the schedule lives in memory, so Redis keeps the old
value until its TTL ends (default_ttl bounds it).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from .guard import FillGuard

Claim = dict[bytes, tuple[Hashable, int]]
"""The repairs one run carries out: Redis key -> (L1 key, generation)."""


class Repairs:
    """The keys waiting for a repair, and the counts metrics export."""

    def __init__(self, guard: FillGuard) -> None:
        self._guard = guard
        self._lock = threading.Lock()
        self._running = threading.Lock()  # one repair run at a time, never waited on
        self._pending: Claim = {}
        self._generation = 0
        self.pending = 0  # how many keys wait (read without the lock on every operation)
        self.done = 0

    def schedule(self, l1_keys: list[Hashable], rkeys: list[bytes]) -> None:
        """These writes reached the source of truth but maybe not Redis."""
        self._guard.hold(l1_keys)
        with self._lock:
            self._generation += 1
            for l1_key, rkey in zip(l1_keys, rkeys, strict=True):
                self._pending[rkey] = (l1_key, self._generation)
            self.pending = len(self._pending)

    def written(self, rkeys: list[bytes]) -> None:
        """These keys were just written to Redis (and invalidated): nothing left to repair."""
        with self._lock:
            released = [self._pending.pop(rkey)[0] for rkey in rkeys if rkey in self._pending]
            self.pending = len(self._pending)
        if released:
            self._guard.release(released)

    def claim(self) -> Claim | None:
        """What to repair now, or None (nothing waits, or another run is at it)."""
        if not self.pending or not self._running.acquire(blocking=False):
            return None
        with self._lock:
            claim = dict(self._pending)
        if not claim:
            self._running.release()
            return None
        return claim

    def finish(self, claim: Claim, repaired: bool) -> None:
        """End a run: if Redis took it, the claimed keys not rescheduled since are repaired."""
        try:
            if not repaired:
                return
            with self._lock:
                released = []
                for rkey, entry in claim.items():
                    if self._pending.get(rkey) == entry:
                        del self._pending[rkey]
                        released.append(entry[0])
                self.pending = len(self._pending)
                self.done += len(released)
            self._guard.release(released)
        finally:
            self._running.release()
