"""backend "memory" and enabled false: the caches from_config makes without Redis.

A MemoryStore answers the requests the plans make (core/requests.py) from this process's
memory, the way Redis would answer them: values as the same encoded bytes, TTLs, SET NX,
INCRBY on plain digits, SCAN's glob, the EXPIRE script, tag sets, WATCHed updates (here: a
lock). So MemoryTieredCache and AsyncMemoryTieredCache are the drivers' own code with the
store in Redis's place: every operation keeps its meaning, nothing is shared with another
process, and there is no invalidation bus and no lease (nobody else to tell or to wait for).

The store is bounded by the L1's maxsize (least recently used entries go first). With
enabled false the store keeps nothing and L1 holds nothing: every read misses, so every
get_or_load and decorated call runs the loader, and every write reaches the writer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Any

import redis as redis_py

from .base import REDIS_ERRORS
from .codec import EXPIRE_SCRIPT, HEADER, HEADER_EXT, HEADER_FORMATS, freshness, glob_regex
from .core import lease, plans, tags
from .core import requests as rq
from .core.resilience import RedisCall
from .core.shared import Shared

# Redis's replies to what cannot be done, as redis-py raises them.
_NOT_AN_INTEGER = "ERR value is not an integer or out of range"


class MemoryStore:
    """Redis's side of the requests, in a dict (thread-safe: one lock, as Redis is one thread)."""

    def __init__(self, maxsize: float, keep: bool = True) -> None:
        self._maxsize = maxsize if keep else 0
        self._lock = threading.RLock()
        self._values: OrderedDict[bytes, tuple[bytes, float | None]] = OrderedDict()  # value, deadline
        self._tags: dict[bytes, dict[bytes, None]] = {}  # tag set -> its members, in order
        self._scripts: dict[str, Any] = {
            plans.PEEK: self._peek,
            lease.FILL_UNLEASED: self._fill_unleased,
            EXPIRE_SCRIPT: self._expire,
            tags.TAG: self._tag,
            tags.MEMBERS: self._members,
            tags.DROP: self._drop,
        }

    def answer(self, request: Any) -> Any:
        """What Redis would reply to request (redis.ResponseError for an error reply)."""
        with self._lock:
            if isinstance(request, rq.Pipeline):
                return [self._command(command) for command in request.commands]
            if isinstance(request, rq.Update):
                return self._update(request)
            return self._command(request)

    def _command(self, command: Any) -> Any:
        match command:
            case rq.Get(key):
                return self._get(key)
            case rq.MGet(keys):
                return [self._get(key) for key in keys]
            case rq.Set(key, data, px, nx):
                if nx and self._get(key) is not None:
                    return None
                self._put(key, data if isinstance(data, bytes) else str(data).encode(), px)
                return True
            case rq.Delete(keys) | rq.Unlink(keys):
                return sum(self._remove(key) for key in keys)
            case rq.PTTL(key):
                return self._pttl(key)
            case rq.IncrBy(key, amount):
                return self._incr(key, amount)
            case rq.Eval(script, keys, args):
                action = self._scripts.get(script)
                if action is None:
                    raise redis_py.ResponseError("NOSCRIPT the memory backend has no such script")
                return action(keys, args)
            case rq.Scan(_, match, _):  # everything in one step
                regex = glob_regex(match)
                live = [key for key in list(self._values) if self._get(key) is not None]
                return 0, [key for key in (*live, *self._tags) if regex.fullmatch(key)]
            case rq.Publish():
                return 0
        raise TypeError(f"the memory backend cannot carry out {command!r}")

    # -- values ---------------------------------------------------------------------------------

    def _get(self, key: bytes) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= time.monotonic():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return entry[0]

    def _put(self, key: bytes, data: bytes, px: Any) -> None:
        if px is rq.KEEP_TTL:
            deadline = self._values[key][1] if self._get(key) is not None else None
        else:
            deadline = None if px is None else time.monotonic() + int(px) / 1000.0
        self._values[key] = (data, deadline)
        self._values.move_to_end(key)
        while len(self._values) > self._maxsize:
            self._values.popitem(last=False)

    def _remove(self, key: bytes) -> int:
        held = self._get(key) is not None
        self._values.pop(key, None)
        if self._tags.pop(key, None) is not None:  # a tag set deleted by clear()
            return 1
        return int(held)

    def _pttl(self, key: bytes) -> int:
        if self._get(key) is None:
            return -1 if key in self._tags else -2
        deadline = self._values[key][1]
        return -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))

    def _incr(self, key: bytes, amount: int) -> int:
        if not -(2**63) <= amount < 2**63:
            raise redis_py.ResponseError(_NOT_AN_INTEGER)
        current = self._get(key)
        try:
            total = (0 if current is None else int(current)) + amount
        except ValueError:
            raise redis_py.ResponseError(_NOT_AN_INTEGER) from None
        if not -(2**63) <= total < 2**63:
            raise redis_py.ResponseError("ERR increment or decrement would overflow")
        self._put(key, str(total).encode(), rq.KEEP_TTL)
        return total

    def _update(self, update: rq.Update) -> Any:
        outcome = update.change(self._get(update.key))
        if outcome[0] is rq.NO_CHANGE:
            return outcome[1]
        data, px, result = outcome
        self._put(update.key, data, px)
        return result

    # -- scripts --------------------------------------------------------------------------------

    def _expire(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> int:
        """EXPIRE_SCRIPT: the header's deadline rewritten with the TTL."""
        key, (px, deadline, window, now) = keys[0], args
        value = self._get(key)
        if value is None:
            return 0
        if value[:1] and value[0] in HEADER_FORMATS and len(value) >= HEADER.size:
            extended = freshness(value)
            if extended is not None:
                if extended[0] and extended[0] <= int(now):
                    return 0  # past its logical expiry: gone
                left = self._pttl(key)
                if px not in ("", b"") and left > 0 and extended[0]:
                    window = max(0, left - (extended[0] - int(now)))
                px = int(px) + int(window) if px not in ("", b"") else px
            value = value[:1] + bytes(deadline) + value[HEADER.size :]
        self._put(key, value, int(px) if px not in ("", b"") else None)
        return 1

    def _fill_unleased(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> int:
        """lease.FILL_UNLEASED: SET NX, but over a value past its logical expiry."""
        key, (data, px, now) = keys[0], args
        current = self._get(key)
        if current is not None:
            extended = freshness(current)
            if extended is None or not extended[0] or extended[0] > int(now):
                return 0
        self._put(key, data, int(px) if px not in ("", b"") else None)
        return 1

    def _peek(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> list[Any]:
        """plans.PEEK: PTTL and the value's first bytes."""
        value = self._get(keys[0])
        if value is None:
            return [-2]
        return [self._pttl(keys[0]), value[: HEADER_EXT.size]]

    def _tag(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> int:
        """tags.TAG: file the keys under the tag sets, after dropping members whose key is
        gone from them and from the SWEEP oldest other tag sets (deleted once empty)."""
        for _ in range(min(tags.SWEEP, len(self._tags))):  # the oldest tag sets, in turn
            self._settle(next(iter(self._tags)))
        for tag_set in keys[1:]:
            self._settle(tag_set)
            self._tags.setdefault(tag_set, {}).update(dict.fromkeys(args[2:]))  # their SETs come next
        return 1

    def _settle(self, tag_set: bytes) -> None:
        members = self._tags.pop(tag_set, {})
        for member in [member for member in members if self._get(member) is None]:
            del members[member]
        if members:
            self._tags[tag_set] = members

    def _members(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> list[Any]:
        """tags.MEMBERS: the whole walk in one step."""
        return [0, [member for member in self._tags.get(keys[0], {}) if self._get(member) is not None]]

    def _drop(self, keys: tuple[bytes, ...], args: tuple[Any, ...]) -> int:
        tag_set, removed = keys[1], 0
        members = self._tags.get(tag_set, {})
        for key in keys[2:]:
            members.pop(key, None)
            removed += self._remove(key)
        if not members:
            self._tags.pop(tag_set, None)
        return removed


def carry_out(cache: Any, request: Any) -> Any:
    """A request of the Redis tier, answered by the cache's MemoryStore as RedisCall sees
    a call (latency counted, an error reply raised as RedisReplyError)."""
    with RedisCall(cache._shared, request.op):
        return cache._store.answer(request)


def start(name: str, enabled: bool, options: dict[str, Any]) -> tuple[Shared, MemoryStore]:
    """A memory cache's shared state and store: no invalidation bus and no lease (there is
    no other process), and with enabled false, an L1 and a store that keep nothing."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {enabled!r}")
    for option in ("invalidation", "lease"):
        if options.get(option):
            raise ValueError(f"a memory cache has no other process to share with: {option}= does not apply")
    # Early refresh and the stale windows refresh under the fleet's lease, and there is no
    # fleet: values simply expire (the settings are accepted, so a configuration that uses
    # them can switch to memory, or off).
    options = {**options, "invalidation": None, "lease": False}
    for option in ("early_refresh", "stale_while_revalidate", "stale_if_error"):
        options.pop(option, None)
    if not enabled:
        options["l1_maxsize"] = 0
    elif options.get("l1_maxsize", 1) == 0:  # the store's bound too: it would keep nothing
        raise ValueError(
            "a memory cache keeps at most l1_maxsize entries: give it one above 0 (enabled=False keeps none)"
        )
    shared = Shared(name=name, errors=REDIS_ERRORS, db=0, **options)
    shared.freshness_settable = False
    return shared, MemoryStore(shared.l1.maxsize, keep=enabled)
