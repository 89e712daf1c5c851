"""Logic with no I/O, shared by TieredCache (sync) and AsyncTieredCache (asyncio).

cache.py and aio.py differ only where Redis is called; everything else is here::

    get(k) ─► L1 (C: TieredFront.get) ──── hit ─────────────────────────────────────► value
               │ miss
               ▼
              token = guard.begin_read()           (fill guard: what happens to k from now?)
              breaker.allow()? ── open ─► count short-circuit ─► default / loader
              L2 GET ──────────── error ─► l2_failed(): breaker, count, log once a burst
               │ bytes / nil
               ▼
              decode ── corrupt ─► counted miss (never raised)
              fill(k, value, deadline, token) ─► L1, unless k was invalidated, flushed or
               │                                 written since the token (counted as dropped)
               ▼
              value ; on a miss: loader via single-flight ─► L2 SET NX PX ─► fill

    set(k, v) ─► encode (TypeError here: nothing written) ─► writer(k, v) ─► token =
                 guard.begin_writes(k) ─► L2 SET PX ─► guard.end_writes: L1 set (or drop)
    delete(k) ─► writer(k, DELETED) ─► guard.begin_write ─► drop L1 ─► L2 DEL ─► drop L1

An invalidation (local write, or from another process once the bus exists) bumps the
guard; a fill whose token predates it is dropped, so a value read before a write can never
land in L1 after it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, NamedTuple

import msgpack
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ._validate import ttl_seconds
from .codec import HEADER, MSGPACK as MSGPACK_FORMAT, UNPACK_OPTIONS, Codec, KeyCodec, check_key, rebuild
from .errors import CacheError, CacheUnavailable, DecodeError
from .invalidation import BusSettings, Publisher, channel_for
from .local import MISSING, Histogram, L1Gate, LocalCache, TieredFront, decode_reply, fill_l1

log = logging.getLogger("tiercache")


class _Deleted:
    """What a writer receives as the value when a key is deleted."""

    def __repr__(self) -> str:
        return "tiercache.DELETED"


DELETED: Any = _Deleted()


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

    def __init__(self, l1: Any, gate: Any, history: int = 1024) -> None:
        self.l1 = l1
        self.gate = gate
        self._lock = threading.RLock()  # RLock: a value's __del__ may come back in
        self._seq = 0
        self._log: deque[tuple[int, Any]] = deque(maxlen=history)  # (seq, keys or _FLUSH)
        self._writes: dict[Any, int] = {}
        self.dropped = 0

    def begin_read(self) -> int:
        return self._seq

    def fill(self, key: Any, token: int, value: Any, ttl: float) -> bool:
        """Store a value read (or loaded) under token, unless it may be stale."""
        with self._lock:
            if not self.gate.open:
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
            if self._seq == token:
                allowed = [True] * len(keys)
            else:
                changed = self._changed_since(token)
                allowed = [key not in changed for key in keys]
                self.dropped += sum(1 for index, _, _ in fills if not allowed[index])
            fill_l1(self.l1, keys, fills, allowed, cache_none)

    def begin_writes(self, keys: list[Any]) -> int:
        with self._lock:
            for key in keys:
                self._writes[key] = self._writes.get(key, 0) + 1
            self._record(tuple(keys))
            return self._seq

    def end_writes(self, keys: list[Any], token: int, values: list[Any] | None, ttl: float, ok: bool) -> None:
        """Finish a write: keep each new value in L1 if it is safe to, else drop the key."""
        with self._lock:
            changed = () if self._seq == token else self._changed_since(token)
            store = ok and values is not None and ttl > 0 and self.gate.open
            for index, key in enumerate(keys):
                if store and self._writes[key] == 1 and key not in changed:
                    self.l1.set(key, values[index], ttl)
                else:
                    self.l1.delete(key)
            self._record(tuple(keys))
            for key in keys:
                left = self._writes[key] - 1
                if left:
                    self._writes[key] = left
                else:
                    del self._writes[key]

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
            for key in self.l1.keys():
                if type(key) is tuple and key[0][: len(scope)] == scope:
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


class CircuitBreaker:
    """Stops calls to a Redis that keeps failing, and lets one probe through now and then.

    closed: calls go through; `failure_threshold` failures in a row open it. open: calls are
    refused at once for `reset_timeout` seconds. half_open: one probe goes through; its
    success closes the breaker, its failure opens it again.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"breaker_threshold must be an int >= 1, got {failure_threshold!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = ttl_seconds(reset_timeout, "breaker_reset")
        self._timer = timer
        self._lock = threading.Lock()
        self.state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        if self.state == self.CLOSED:
            return True
        with self._lock:
            if self.state == self.OPEN and self._timer() - self._opened_at >= self.reset_timeout:
                self.state = self.HALF_OPEN
                self._probing = False
            if self.state == self.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return self.state == self.CLOSED

    def success(self) -> None:
        if self.state != self.CLOSED or self._failures:
            with self._lock:
                self.state = self.CLOSED
                self._failures = 0
                self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self.state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                self.state = self.OPEN
                self._opened_at = self._timer()
                self._probing = False


class BurstLog:
    """Logs the first error of a burst, then at most one summary line per `interval`."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -math.inf
        self._suppressed = 0

    def error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            if self._suppressed:
                message += " (%d more since the last report)"
                args = (*args, self._suppressed)
            log.warning(message, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1


# Upper bounds (seconds) of the fixed histogram buckets; +Inf is implied.
L2_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Why L1 was emptied: the subscriber lost its connection or heard nothing past max_silence,
# a message went missing, or a cache (this one or another process's) was cleared.
FLUSH_REASONS = ("disconnect", "silence", "message_lost", "clear")


class TierStats:
    """Counters and histograms of the Redis tier, the loader and the bus (the L1 counts in C).

    Only slow paths (a Redis round trip, a load, a message) touch these, each with a plain
    `+=` or one C call (Histogram.observe): no lock per operation."""

    FIELDS = (
        "l2_hits", "l2_misses", "l2_errors", "decode_errors", "short_circuits",
        "loads", "load_errors", "write_failures",
        "invalidations_sent", "invalidations_received", "messages_lost", "bad_messages", "reconnects",
    )

    def __init__(self) -> None:
        for field in self.FIELDS:
            setattr(self, field, 0)
        self.errors_by_op: dict[tuple[str, str], int] = {}
        self.flushes: dict[str, int] = dict.fromkeys(FLUSH_REASONS, 0)
        self.l2_duration: dict[str, Any] = {}  # op -> Histogram
        self.load_duration = Histogram(LOAD_BUCKETS)
        self.invalidation_lag = Histogram(LAG_BUCKETS)

    def as_dict(self) -> dict[str, int]:
        return {field: getattr(self, field) for field in self.FIELDS}

    def flushed(self, reason: str) -> None:
        """Count L1 emptied for reason (one of FLUSH_REASONS)."""
        self.flushes[reason] += 1

    def l2_timed(self, op: str, seconds: float) -> None:
        """Observe one Redis round trip of op (a histogram per op, made on its first call)."""
        histogram = self.l2_duration.get(op)
        if histogram is None:
            histogram = self.l2_duration.setdefault(op, Histogram(L2_BUCKETS))
        histogram.observe(seconds)


def histogram_dict(histogram: Any) -> dict[str, Any]:
    """A Histogram as a plain mapping: count, sum, and cumulative counts by upper bound."""
    counts, total = histogram.snapshot()
    buckets: dict[float, int] = {}
    running = 0
    for bound, count in zip((*histogram.upper_bounds, math.inf), counts):
        running += count
        buckets[bound] = running
    return {"count": running, "sum": total, "buckets": buckets}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


class Shared:
    """State every namespace view of one cache shares: the tiers, the codec, the guard."""

    def __init__(
        self,
        *,
        name: str,
        l1: Any,
        codec: Codec,
        keys: KeyCodec,
        default_ttl: float | None,
        l1_ttl: float | None,
        loader: Callable[[Any], Any] | None,
        writer: Callable[[Any, Any], Any] | None,
        cache_none: bool,
        strict: bool,
        breaker: CircuitBreaker,
        publisher: Publisher | None,
        bus_settings: BusSettings,
    ) -> None:
        self.name = name
        self.l1 = l1
        self.codec = codec
        self.root_keys = keys
        self.default_ttl_ms = None if default_ttl is None else _ms(ttl_seconds(default_ttl, "default_ttl"))
        self.l1_ttl = math.inf if l1_ttl is None else ttl_seconds(l1_ttl, "l1_ttl")
        for label, func in (("loader", loader), ("writer", writer)):
            if func is not None and not callable(func):
                raise TypeError(f"{label} must be callable, got {type(func).__name__}")
        self.loader = loader
        self.writer = writer
        self.cache_none = bool(cache_none)
        self.strict = bool(strict)
        self.breaker = breaker
        self.gate = L1Gate()
        self.guard = FillGuard(l1, self.gate)
        self.publisher = publisher
        self.bus_settings = bus_settings
        self.tracking = False  # asked for with invalidation="tracking"; True once the server agreed
        self.tracking_wanted = False
        if publisher is not None:
            self.gate.open = False  # until the subscriber's first subscription is confirmed
        self.stats = TierStats()
        self.burst_log = BurstLog()
        self.clock = time.perf_counter  # what durations are measured with
        self.bus_state: Any = None  # the subscriber's SubscriberState, once there is one
        self.metrics: list[Any] = []  # CacheCollector / MultiprocessMirror handles: close() ends them

    # -- ttl ------------------------------------------------------------------------------

    def ttl_ms(self, ttl: Any) -> int | None:
        """Redis PX for a ttl argument: None = the cache default; inf or no default = None."""
        if ttl is None:
            return self.default_ttl_ms
        seconds = ttl_seconds(ttl)
        return None if seconds == math.inf else _ms(seconds)

    def l1_ttl_for(self, ttl_ms: int | None) -> float:
        """L1 ttl for an entry whose Redis ttl is ttl_ms (None = no expiry): never longer."""
        if ttl_ms is None:
            return self.l1_ttl
        return min(self.l1_ttl, ttl_ms / 1000.0)

    def l1_ttl_from_deadline(self, deadline_ms: int) -> float:
        """L1 ttl for a value whose header says Redis drops it at deadline_ms (0 = never);
        0 or less means do not fill."""
        if not deadline_ms:
            return self.l1_ttl
        return min(self.l1_ttl, (deadline_ms - time.time() * 1000.0) / 1000.0)

    # -- decoding and filling ----------------------------------------------------------------

    def decode(self, data: bytes, redis_key: bytes) -> tuple[Any, int | None]:
        """(value, deadline) or (MISSING, None) for bytes that do not decode (counted)."""
        try:
            return self.codec.decode(data, redis_key)
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self.burst_log.error("tiercache %s: undecodable value under %r: %s", self.name, redis_key, exc)
            return MISSING, None

    def decode_failed(self, redis_key: bytes, exc: BaseException) -> None:
        """Count a value Redis returned that is not ours to read (e.g. the wrong type)."""
        self.stats.decode_errors += 1
        self.burst_log.error("tiercache %s: cannot read %r: %s", self.name, redis_key, exc)

    def fill(self, l1_key: Any, value: Any, l1_ttl: float, token: int) -> None:
        """The one way a single value read from Redis or loaded reaches L1."""
        if l1_ttl > 0 and (value is not None or self.cache_none):
            self.guard.fill(l1_key, token, value, l1_ttl)

    # -- errors ---------------------------------------------------------------------------

    def l2_failed(self, op: str, exc: BaseException) -> None:
        """Count and log a Redis error and tell the breaker."""
        self.breaker.failure()
        self.stats.l2_errors += 1
        label = (op, type(exc).__name__)
        self.stats.errors_by_op[label] = self.stats.errors_by_op.get(label, 0) + 1
        self.burst_log.error("tiercache %s: Redis %s failed: %r", self.name, op, exc)

    def short_circuited(self) -> None:
        self.stats.short_circuits += 1

    def load_finished(self, started: float, ok: bool) -> None:
        """Count a loader call that began at started (on self.clock) and succeeded or not."""
        self.stats.load_duration.observe(self.clock() - started)
        if ok:
            self.stats.loads += 1
        else:
            self.stats.load_errors += 1


# Errors that mean "Redis is not answering": they feed the circuit breaker and degrade reads.
# (asyncio.TimeoutError is OSError's TimeoutError from Python 3.11 on, not before.)
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


class RedisCall:
    """What both drivers do around one round trip to Redis: ``with RedisCall(shared, op):``.

    Refused at once (CacheUnavailable) while the breaker is open; timed into the op's
    histogram; an error that means Redis is not answering is counted, told to the breaker
    and raised as CacheUnavailable; a success closes the breaker. Other errors (a Redis
    ResponseError) pass through as they are."""

    __slots__ = ("shared", "op", "started")

    def __init__(self, shared: Shared, op: str) -> None:
        self.shared = shared
        self.op = op

    def __enter__(self) -> None:
        sh = self.shared
        if not sh.breaker.allow():
            sh.short_circuited()
            raise CacheUnavailable(f"cache {sh.name!r}: Redis is failing, circuit open")
        self.started = sh.clock()

    def __exit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        sh = self.shared
        sh.stats.l2_timed(self.op, sh.clock() - self.started)
        if exc is None:
            sh.breaker.success()
        elif isinstance(exc, UNAVAILABLE):
            sh.l2_failed(self.op, exc)
            raise CacheUnavailable(f"cache {sh.name!r}: {exc}") from exc
        return False


def _ms(seconds: float) -> int:
    return max(1, int(math.ceil(seconds * 1000)))




# -- the operations, written once for both drivers -----------------------------------------
#
# Each operation is a generator (a "plan") that yields what it needs done and receives the
# result: Command (one Redis call), Pipeline (several in one round trip) or Call (the user's
# loader or writer). TieredCache runs plans with blocking calls, AsyncTieredCache awaits
# them. A Redis call that fails with a connection error or timeout, or that the circuit
# breaker refuses, is thrown into the plan as CacheUnavailable; other Redis errors as they
# are.


class Command(NamedTuple):
    """One Redis call: client.<op>(*args, **kwargs)."""

    op: str
    args: tuple = ()
    kwargs: dict = {}


class Pipeline(NamedTuple):
    """Several Redis calls in one round trip; the result is the list of their results.

    op names the round trip in metrics: the main command's name (a write's PUBLISH rides
    along with it), or set_many."""

    commands: list
    transaction: bool = False
    op: str = "pipeline"


class Call(NamedTuple):
    """A user function (loader or writer); the async driver awaits what it returns."""

    func: Callable[..., Any]
    args: tuple


# Rewrites the deadline in a tiercache value's header along with the Redis TTL, so readers
# never give an L1 copy more time than Redis has left. ARGV[1]: PX or "" for none;
# ARGV[2]: the new 8-byte deadline.
EXPIRE_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local fmt = string.byte(v, 1)
if fmt >= 16 and fmt < 48 and string.len(v) >= 9 then
  v = string.sub(v, 1, 1) .. ARGV[2] .. string.sub(v, 10)
  if ARGV[1] == '' then redis.call('SET', KEYS[1], v) else redis.call('SET', KEYS[1], v, 'PX', ARGV[1]) end
elseif ARGV[1] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


def _glob_escape(prefix: bytes) -> bytes:
    """prefix with the characters SCAN MATCH treats specially escaped (backslash first)."""
    for char in (b"\\", b"*", b"?", b"[", b"]"):
        prefix = prefix.replace(char, b"\\" + char)
    return prefix


class CacheBase(TieredFront):
    """What TieredCache and AsyncTieredCache share: construction, views, and every plan."""

    _shared: Shared
    _keys: KeyCodec

    def __init__(
        self,
        redis: Any,
        *,
        name: str,
        l1_maxsize: int = 10_000,
        l1_ttl: float | None = 30.0,
        default_ttl: float | None = 300.0,
        l1_policy: str = "lru",
        loader: Callable[[Any], Any] | None = None,
        writer: Callable[[Any, Any], Any] | None = None,
        cache_none: bool = False,
        strict: bool = False,
        serializer: str = "msgpack",
        secret: bytes | str | None = None,
        compression: str | None = "zlib",
        compress_threshold: int = 1024,
        key_prefix: str = "tc",
        breaker_threshold: int = 3,
        breaker_reset: float = 2.0,
        invalidation: str | None = "pubsub",
        heartbeat: float = 1.0,
        max_silence: float = 3.0,
        gap_grace: float = 1.0,
    ) -> None:
        if redis is None:
            raise TypeError("redis must be a redis-py client; use from_url() to make one")
        if invalidation not in ("pubsub", "tracking", None):
            raise ValueError(f"invalidation must be 'pubsub', 'tracking' or None, got {invalidation!r}")
        keys = KeyCodec(key_prefix, name)
        bus_settings = BusSettings(heartbeat, max_silence, gap_grace)
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        publisher = Publisher(channel_for(keys, db)) if invalidation else None
        l1 = LocalCache(maxsize=l1_maxsize, ttl=l1_ttl, policy=l1_policy)
        self._shared = Shared(
            name=name,
            l1=l1,
            codec=Codec(serializer, compression, compress_threshold, secret),
            keys=keys,
            default_ttl=default_ttl,
            l1_ttl=l1_ttl,
            loader=loader,
            writer=writer,
            cache_none=cache_none,
            strict=strict,
            breaker=CircuitBreaker(breaker_threshold, breaker_reset),
            publisher=publisher,
            bus_settings=bus_settings,
        )
        self._shared.tracking_wanted = invalidation == "tracking"
        self._redis = redis
        self._owns_client = False
        self._keys = keys
        self._bind_l1(l1, None, self._shared.gate)

    # -- views and introspection -----------------------------------------------------------

    def namespace(self, name: str) -> Any:
        """A view whose keys cannot collide with this one's or any other namespace's.

        Views share the L1, the Redis client and the counters; they nest."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._owns_client = False  # closing a view must not close the client it shares
        view._keys = self._keys.child(name)
        view._bind_l1(self._shared.l1, view._keys.path, self._shared.gate)
        return view

    @property
    def name(self) -> str:
        """The cache's name: part of every Redis key and of every metric label."""
        return self._shared.name

    @property
    def path(self) -> tuple[str, ...]:
        """The namespace path of this view; () for the cache itself."""
        return self._keys.path

    @property
    def l1(self) -> Any:
        """The in-process tier (a LocalCache), shared by every view."""
        return self._shared.l1

    @property
    def redis(self) -> Any:
        """The redis-py client of the Redis tier."""
        return self._redis

    def stats(self) -> dict[str, Any]:
        """Every figure the Prometheus collector exports, as a plain mapping, plus hit ratios.

        Counters since the cache was made: l1_* (hits, misses, sets, deletes, evictions,
        expirations, and bypassed: reads while L1 was shut), the Redis tier (l2_*), loads,
        invalidations, fills dropped, L1 flushes by reason. State: l1_size, l1_maxsize,
        l1_serving, subscriber_connected, breaker. Histograms (count, sum, cumulative
        buckets): l2_duration by op, load_duration, invalidation_lag. Ratios are None until
        there is something to divide by."""
        sh = self._shared
        tier = sh.stats
        stats: dict[str, Any] = {f"l1_{k}": v for k, v in sh.l1.stats().items()}
        stats["l1_bypassed"] = sh.gate.bypassed
        stats.update(tier.as_dict())
        errors: dict[str, dict[str, int]] = {}
        for (op, error), count in dict(tier.errors_by_op).items():
            errors.setdefault(op, {})[error] = count
        stats["l2_errors_by_op"] = errors
        stats["fills_dropped"] = sh.guard.dropped
        stats["l1_flushes"] = dict(tier.flushes)
        stats["l1_serving"] = sh.gate.open
        stats["invalidation"] = (
            None if sh.publisher is None else "tracking" if sh.tracking else "pubsub"
        )
        stats["subscriber_connected"] = None if sh.bus_state is None else sh.bus_state.connected
        stats["breaker"] = sh.breaker.state
        stats["l2_duration"] = {op: histogram_dict(h) for op, h in dict(tier.l2_duration).items()}
        stats["load_duration"] = histogram_dict(tier.load_duration)
        stats["invalidation_lag"] = histogram_dict(tier.invalidation_lag)
        l1_reads = stats["l1_hits"] + stats["l1_misses"]
        stats["l1_hit_ratio"] = _ratio(stats["l1_hits"], l1_reads)
        stats["l2_hit_ratio"] = _ratio(tier.l2_hits, tier.l2_hits + tier.l2_misses)
        # Every read asks L1 first unless L1 is shut; it is a hit if either tier answers.
        stats["hit_ratio"] = _ratio(stats["l1_hits"] + tier.l2_hits, l1_reads + stats["l1_bypassed"])
        return stats

    def register_metrics(self, registry: Any = None, interval: float = 1.0) -> Any:
        """Export this cache's figures to Prometheus (see tiercache.metrics); returns the handle.

        A CacheCollector in registry (default: prometheus_client's default registry), read at
        scrape time; or, when prometheus_client is in multiprocess mode (PROMETHEUS_MULTIPROC_DIR)
        and no registry is given, a MultiprocessMirror writing the figures to this process's
        files every interval seconds. A name can be registered once per registry (or process);
        close() unregisters."""
        from .metrics import register

        return register(self, registry, interval)

    def _stop_metrics(self) -> None:
        handles = list(self._shared.metrics)
        self._shared.metrics.clear()
        for handle in handles:
            try:
                handle.stop()
            except Exception as exc:  # the cache must still close; the figures are lost, say so
                log.warning("tiercache %s: could not write its metrics a last time: %r", self.name, exc)

    def redis_key(self, key: Any) -> bytes:
        """The Redis key that holds key in this namespace."""
        return self._keys.redis_key(key)

    def _l1_key(self, key: Any) -> Any:
        check_key(key)
        return key if self._keys.path == () else (self._keys.path, key)

    def _write_failed(self, what: str) -> None:
        self._shared.stats.write_failures += 1
        if self._shared.strict:
            raise CacheUnavailable(f"cache {self.name!r}: {what} did not reach Redis")

    def _start_load(self, key: Any, loader: Any, ttl: Any, look_in_l1: bool) -> tuple[Any, Any, Callable[[], Any]]:
        """What get_or_load does before single-flight, for both drivers: check the arguments,
        look in L1. (L1 value or MISSING, the flight's key, a function that runs the load)."""
        l1_key = self._l1_key(key)
        ttl_ms = self._shared.ttl_ms(ttl)
        if not callable(loader):
            raise TypeError(f"loader must be callable, got {type(loader).__name__}")
        value = self._l1_get(key) if look_in_l1 else MISSING
        return value, l1_key, lambda: self._run(self._plan_load(key, l1_key, loader, ttl_ms))

    def _loaded(self, value: Any, default: Any, model: Any) -> Any:
        """What get returns for what a cache-wide loader produced."""
        if value is None and not self._shared.cache_none:
            return default
        return rebuild(value, model)

    # -- reads ------------------------------------------------------------------------------

    def _read(self, l1_key: Any, rkey: bytes) -> Generator[Any, Any, Any]:
        """Redis GET, decode, guarded L1 fill. The value, or MISSING."""
        sh = self._shared
        token = sh.guard.begin_read()
        try:
            data = yield Command("get", (rkey,))
        except CacheUnavailable:
            return MISSING
        except RedisError as exc:  # e.g. WRONGTYPE: something else lives there
            sh.decode_failed(rkey, exc)
            return MISSING
        if data is None:
            sh.stats.l2_misses += 1
            return MISSING
        value, deadline = sh.decode(data, rkey)
        if value is MISSING:
            sh.stats.l2_misses += 1
            return MISSING
        sh.stats.l2_hits += 1
        if deadline is None:  # a plain integer carries no deadline: ask Redis
            try:
                pttl = yield Command("pttl", (rkey,))
            except (CacheUnavailable, RedisError):
                pttl = 0
            l1_ttl = sh.l1_ttl_for(None if pttl == -1 else pttl) if pttl > 0 or pttl == -1 else 0.0
        else:
            l1_ttl = sh.l1_ttl_from_deadline(deadline)
        sh.fill(l1_key, value, l1_ttl, token)
        return value

    def _plan_get(self, key: Any, model: Any) -> Generator[Any, Any, Any]:
        l1_key = self._l1_key(key)
        if model is not None:  # the fast path looked in L1 only when model was None
            value = self._l1_get(key)
            if value is not MISSING:
                return rebuild(value, model)
        value = yield from self._read(l1_key, self._keys.redis_key(key))
        return value if value is MISSING else rebuild(value, model)

    def _plan_load(self, key: Any, l1_key: Any, loader: Any, ttl_ms: int | None) -> Generator[Any, Any, Any]:
        """Redis, then the loader; the loaded value goes to Redis (NX) and L1."""
        sh = self._shared
        rkey = self._keys.redis_key(key)
        value = yield from self._read(l1_key, rkey)
        if value is not MISSING:
            return value
        token = sh.guard.begin_read()
        started = sh.clock()
        try:
            value = yield Call(loader, (key,))
        except BaseException:
            sh.load_finished(started, ok=False)
            raise
        sh.load_finished(started, ok=True)
        if value is None and not sh.cache_none:
            return None
        data = sh.codec.encode(value, rkey, ttl_ms)
        stored = False
        try:
            # NX: a write that landed while we were loading is newer than what we loaded.
            stored = bool((yield Command("set", (rkey, data), {"px": ttl_ms, "nx": True})))
        except CacheUnavailable:
            stored = True  # Redis is down: L1 alone keeps the loader from a stampede
        except RedisError as exc:
            sh.l2_failed("set", exc)
        if stored:
            sh.fill(l1_key, sh.codec.decode(data, rkey)[0], sh.l1_ttl_for(ttl_ms), token)
        return value

    def _plan_get_many(self, keys: Iterable[Any]) -> Generator[Any, Any, Any]:
        # The per-key work (L1 look-ups, key encoding, decoding, L1 fills) runs in compiled
        # loops: it is what get_many costs on top of the MGET itself.
        sh = self._shared
        found: dict[Any, Any] = {}
        missing = self._l1_get_many(keys, found)
        if not missing:
            return found
        rkeys = self._keys.redis_keys(missing)  # TypeError for a bad key, before any I/O
        path = self._keys.path
        l1_keys = [(path, key) for key in missing] if path else missing
        token = sh.guard.begin_read()
        hits_before = len(found)
        try:
            blobs = yield Command("mget", (rkeys,))
        except (CacheUnavailable, RedisError):
            blobs = [None] * len(rkeys)
        fills, slow = decode_reply(
            missing, blobs, found, msgpack.Unpacker, UNPACK_OPTIONS,
            MSGPACK_FORMAT, HEADER.size, time.time() * 1000.0, sh.l1_ttl,
        )
        for index in slow:  # other formats, and anything that does not decode
            rkey = rkeys[index]
            value, deadline = sh.decode(blobs[index], rkey)
            if value is MISSING:
                continue
            found[missing[index]] = value
            if deadline is not None:  # plain integers are not held in L1 by get_many
                fills.append((index, value, sh.l1_ttl_from_deadline(deadline)))
        hits = len(found) - hits_before
        sh.stats.l2_hits += hits
        sh.stats.l2_misses += len(blobs) - hits
        sh.guard.fill_many(l1_keys, token, fills, sh.cache_none)
        return found

    def _plan_exists(self, key: Any) -> Generator[Any, Any, Any]:
        l1_key = self._l1_key(key)
        if self.l1_enabled and l1_key in self._shared.l1:
            return True
        try:
            return bool((yield Command("exists", (self._keys.redis_key(key),))))
        except (CacheUnavailable, RedisError):
            return False

    def _plan_ttl(self, key: Any) -> Generator[Any, Any, Any]:
        self._l1_key(key)
        try:
            pttl = yield Command("pttl", (self._keys.redis_key(key),))
        except (CacheUnavailable, RedisError):
            return None
        if pttl == -2:
            return None
        return math.inf if pttl == -1 else pttl / 1000.0

    # -- writes -------------------------------------------------------------------------------

    def _write(
        self, l1_keys: list[Any], rkeys: list[bytes], request: Any, l1_values: list[Any] | None, l1_ttl: float
    ) -> Generator[Any, Any, Any]:
        """Run a write under the fill guard, publish its invalidation in the same round trip,
        and keep the new values in L1 (or drop the keys).

        Returns (ok, result): ok is False when Redis could not be reached."""
        sh = self._shared
        guard = sh.guard
        publisher = sh.publisher
        single = type(request) is Command
        if publisher is not None:
            publish = Command("publish", (publisher.channel, publisher.keys_message(rkeys)))
            if type(request) is Command:
                request = Pipeline([request, publish], op=request.op)
            else:
                request = Pipeline([*request.commands, publish], request.transaction, request.op)
        token = guard.begin_writes(l1_keys)
        ok, result = True, None
        try:
            if l1_values is None:
                guard.invalidate(l1_keys)  # deletes: nobody reads the old value from L1 meanwhile
            result = yield request
        except CacheUnavailable:
            ok = False
        finally:
            guard.end_writes(l1_keys, token, l1_values, l1_ttl, ok)
        if ok and publisher is not None:
            sh.stats.invalidations_sent += 1
            result = result[0] if single else result[:-1]
        return ok, result

    def _plan_set(self, key: Any, value: Any, ttl: Any) -> Generator[Any, Any, Any]:
        sh = self._shared
        l1_key = self._l1_key(key)
        ttl_ms = sh.ttl_ms(ttl)
        rkey = self._keys.redis_key(key)
        data = sh.codec.encode(value, rkey, ttl_ms)  # TypeError here: nothing written anywhere
        l1_value = sh.codec.decode(data, rkey)[0]  # L1 holds what every other process reads
        if sh.writer is not None:
            yield Call(sh.writer, (key, value))
        ok, _ = yield from self._write([l1_key], [rkey], Command("set", (rkey, data), {"px": ttl_ms}), [l1_value], sh.l1_ttl_for(ttl_ms))
        if not ok:
            self._write_failed("set")
        return ok

    def _plan_set_many(self, mapping: Any, ttl: Any) -> Generator[Any, Any, Any]:
        sh = self._shared
        pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
        ttl_ms = sh.ttl_ms(ttl)
        l1_keys = [self._l1_key(key) for key, _ in pairs]
        rkeys = [self._keys.redis_key(key) for key, _ in pairs]
        blobs = [sh.codec.encode(value, rkey, ttl_ms) for (_, value), rkey in zip(pairs, rkeys)]
        l1_values = [sh.codec.decode(data, rkey)[0] for data, rkey in zip(blobs, rkeys)]
        if not pairs:
            return True
        if sh.writer is not None:
            for key, value in pairs:
                yield Call(sh.writer, (key, value))
        commands = [Command("set", (rkey, data), {"px": ttl_ms}) for rkey, data in zip(rkeys, blobs)]
        ok, _ = yield from self._write(l1_keys, rkeys, Pipeline(commands, op="set_many"), l1_values, sh.l1_ttl_for(ttl_ms))
        if not ok:
            self._write_failed("set_many")
        return ok

    def _plan_delete(self, keys: list[Any], what: str) -> Generator[Any, Any, Any]:
        sh = self._shared
        l1_keys = [self._l1_key(key) for key in keys]
        if not keys:
            return 0
        if sh.writer is not None:
            for key in keys:
                yield Call(sh.writer, (key, DELETED))
        rkeys = tuple(self._keys.redis_key(key) for key in keys)
        ok, removed = yield from self._write(l1_keys, list(rkeys), Command("delete", rkeys), None, 0.0)
        if not ok:
            self._write_failed(what)
            return None
        return removed

    def _plan_expire(self, key: Any, ttl: Any) -> Generator[Any, Any, Any]:
        sh = self._shared
        l1_key = self._l1_key(key)
        ttl_ms = sh.ttl_ms(ttl)
        deadline = int(time.time() * 1000) + ttl_ms if ttl_ms else 0
        rkey = self._keys.redis_key(key)
        args = (EXPIRE_SCRIPT, 1, rkey, "" if ttl_ms is None else ttl_ms, deadline.to_bytes(8, "big"))
        ok, changed = yield from self._write([l1_key], [rkey], Command("eval", args), None, 0.0)
        if not ok:
            self._write_failed("expire")
            return False
        return bool(changed)

    def _plan_incr(self, key: Any, amount: int, ttl: Any) -> Generator[Any, Any, Any]:
        sh = self._shared
        l1_key = self._l1_key(key)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, got {type(amount).__name__}")
        ttl_ms = sh.ttl_ms(ttl)
        rkey = self._keys.redis_key(key)
        commands = [Command("incrby", (rkey, amount))]
        if ttl_ms is not None:  # a counter this call creates gets the ttl; an existing one keeps its own
            commands.insert(0, Command("set", (rkey, 0), {"nx": True, "px": ttl_ms}))
        try:
            ok, results = yield from self._write([l1_key], [rkey], Pipeline(commands, True, "incrby"), None, 0.0)
        except RedisError as exc:
            raise CacheError(f"cache {self.name!r}: cannot increment {key!r}: {exc}") from exc
        if not ok:
            raise CacheUnavailable(f"cache {self.name!r}: incr did not reach Redis")
        return results[-1]

    def _plan_clear(self) -> Generator[Any, Any, Any]:
        sh = self._shared
        pattern = _glob_escape(self._keys.namespace_prefix) + b"*"
        sh.stats.flushed("clear")
        self._clear_l1()
        cursor, ok = 0, True
        try:
            while True:
                cursor, found = yield Command("scan", (cursor,), {"match": pattern, "count": 1000})
                if found:
                    yield Command("unlink", tuple(found))
                if not cursor:
                    break
            if sh.publisher is not None:
                message = sh.publisher.flush_message(self._keys.path)
                yield Command("publish", (sh.publisher.channel, message))
                sh.stats.invalidations_sent += 1
        except CacheUnavailable:
            ok = False
        self._clear_l1()  # again: a read may have filled from a key deleted above
        if not ok:
            self._write_failed("clear")
        return ok

    def _clear_l1(self) -> None:
        self._shared.guard.flush(self._keys.path)


def ready_call_result(cache: CacheBase, result: Any) -> Any:
    """A sync driver's check that a user function did not hand back a coroutine."""
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(
            f"cache {cache.name!r}: a loader or writer returned an awaitable; "
            "use AsyncTieredCache for async functions"
        )
    return result
