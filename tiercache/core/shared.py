"""The state every namespace view of one cache shares (Shared), and what a plan runs
against (Scope: the shared state and one view's keys).

Shared is made from the cache's options and needs no Redis client: the drivers hand it
their client's error classes and the database number, and do all the I/O.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypedDict

from .._validate import Seconds, ttl_seconds
from ..codec import EXTENDED, MAX_VALUE_SIZE, Codec, KeyCodec, check_key
from ..errors import CacheClosed, DecodeError
from ..local import MISSING, L1Gate, LocalCache, TieredFront
from . import freshness
from .freshness import Freshness
from .guard import FillGuard
from .invalidation import BusSettings, Publisher, SubscriberState, channel_for
from .lease import Tokens
from .repair import Repairs
from .resilience import BurstLog, CircuitBreaker, RedisErrors
from .stats import TierStats

if TYPE_CHECKING:
    from ..metrics import Handle

INVALIDATION_MODES = ("pubsub", "tracking", None)


# The longest Redis TTL tiercache writes, in ms: Redis refuses a PX whose deadline passes
# 2**63 ms, and the value header keeps the deadline in 8 bytes. 2**62 ms is 146 million years.
MAX_TTL_MS = 2**62


def _ms(seconds: float, name: str = "ttl") -> int | None:
    """Redis PX for seconds (None: never expires); ValueError past what Redis can keep."""
    if seconds == math.inf:
        return None
    ms = max(1, math.ceil(seconds * 1000))
    if ms > MAX_TTL_MS:
        raise ValueError(
            f"{name} of {seconds:g} seconds is longer than Redis can keep (at most {MAX_TTL_MS // 1000} s); "
            "use math.inf for no expiry"
        )
    return ms


log = logging.getLogger(__name__)

TOPOLOGY_PAUSE: Final = 0.5  # seconds between two askings for a cluster's map of slots


class CacheOptions(TypedDict, total=False):
    """The keyword options of TieredCache and AsyncTieredCache besides name, for type
    checkers (``**options: Unpack[CacheOptions]``). Their defaults are Shared's, and the
    README's TieredCache section says what each does."""

    l1_maxsize: int
    l1_ttl: Seconds | None
    default_ttl: Seconds | None
    l1_policy: str
    loader: Callable[[Any], Any] | None
    writer: Callable[[Any, Any], Any] | None
    cache_none: bool
    strict: bool
    serializer: str
    secret: bytes | str | None
    compression: str | None
    compress_threshold: int
    max_value_size: int
    key_prefix: str
    breaker_threshold: int
    breaker_reset: float
    invalidation: str | None
    lease: bool
    lease_ttl: Seconds
    heartbeat: float
    max_silence: float
    gap_grace: float
    early_refresh: bool | float
    stale_while_revalidate: Seconds | None
    stale_if_error: Seconds | None


class Shared:
    """Configuration, tiers, guard, breaker and counters of one cache (all its views)."""

    def __init__(
        self,
        *,
        name: str,
        errors: RedisErrors,
        db: int = 0,
        sharded: bool = False,
        l1_maxsize: int = 10_000,
        l1_ttl: Seconds | None = 30.0,
        default_ttl: Seconds | None = 300.0,
        l1_policy: str = "lru",
        loader: Callable[[Any], Any] | None = None,
        writer: Callable[[Any, Any], Any] | None = None,
        cache_none: bool = False,
        strict: bool = False,
        serializer: str = "msgpack",
        secret: bytes | str | None = None,
        compression: str | None = "zlib",
        compress_threshold: int = 1024,
        max_value_size: int = MAX_VALUE_SIZE,
        key_prefix: str = "tc",
        breaker_threshold: int = 3,
        breaker_reset: float = 2.0,
        invalidation: str | None = "pubsub",
        lease: bool = True,
        lease_ttl: Seconds = 10.0,
        heartbeat: float = 1.0,
        max_silence: float = 3.0,
        gap_grace: float = 1.0,
        early_refresh: bool | float = False,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> None:
        if invalidation not in INVALIDATION_MODES:
            raise ValueError(f"invalidation must be 'pubsub', 'tracking' or None, got {invalidation!r}")
        if sharded and invalidation == "tracking":
            raise ValueError(
                "invalidation='tracking' needs one Redis: on Redis Cluster each node tracks only its own "
                "keys, so a tracker would need a connection per node and would miss resharding; use 'pubsub'"
            )
        self.keys = KeyCodec(key_prefix, name, sharded=sharded)
        self.sharded = sharded  # on Redis Cluster: requests go through core/sharding.py
        self.master: tuple[str, int] | None = None  # behind Sentinel: the master last subscribed to
        # On a cluster: a master failed (the client's map of slots may be out of date), and
        # when the map was last asked for again (see topology_due).
        self.topology_stale = False
        self.topology_asked = 0.0
        self.bus_settings = BusSettings(heartbeat, max_silence, gap_grace)
        self.name = name
        self.errors = errors
        self.l1 = LocalCache(maxsize=l1_maxsize, ttl=l1_ttl, policy=l1_policy)
        self.codec = Codec(serializer, compression, compress_threshold, secret, max_value_size)
        default_seconds = math.inf if default_ttl is None else ttl_seconds(default_ttl, "default_ttl")
        self.default_ttl_ms = _ms(default_seconds, "default_ttl")
        self.l1_ttl = math.inf if l1_ttl is None else ttl_seconds(l1_ttl, "l1_ttl")
        for label, func in (("loader", loader), ("writer", writer)):
            if func is not None and not callable(func):
                raise TypeError(f"{label} must be callable, got {type(func).__name__}")
        self.loader = loader
        self.writer = writer
        self.cache_none = bool(cache_none)
        self.lease = bool(lease)  # one load per key in the fleet (core/lease.py)
        self.write_scripts = True  # one-key writes as one script (plans.WRITE_ONE), until refused
        lease_ms = _ms(ttl_seconds(lease_ttl, "lease_ttl"), "lease_ttl")
        if lease_ms is None:
            raise ValueError("lease_ttl must be finite: a lease outlives a process that dies holding it")
        self.lease_ms = lease_ms
        self.lease_tokens = Tokens()
        self.freshness = freshness.settings(early_refresh, stale_while_revalidate, stale_if_error)
        self.freshness_settable = True  # False: calls' settings are ignored (the memory backend)
        if self.freshness.extended and not self.lease:
            raise ValueError("early_refresh and the stale windows refresh under the load lease: they need lease=True")
        self.strict = bool(strict)
        self.breaker = CircuitBreaker(breaker_threshold, breaker_reset)
        # On Redis Cluster, a breaker per master (by its name, host:port), so a master that is
        # down fails only its own slots' calls; self.breaker guards calls that name no slot.
        self.node_breakers: dict[str, CircuitBreaker] = {}
        self.gate = L1Gate()
        self.guard = FillGuard(self.l1, self.gate)
        self.repairs = Repairs(self.guard)
        self.channel = channel_for(self.keys, db)
        self.publisher = Publisher(self.channel) if invalidation else None
        self.tracking_wanted = invalidation == "tracking"
        self.tracking = False  # True once the server agreed to track for us
        if self.publisher is not None:
            self.gate.open = False  # until the subscriber's first subscription is confirmed
        self.stats = TierStats()
        self.burst_log = BurstLog()
        self.clock = time.perf_counter  # what durations are measured with
        self.bus_state: SubscriberState | None = None  # the subscriber's, once there is one
        self.metrics: list[Handle] = []  # close() stops each
        self.closed = False
        self.forked = False  # set in a forked child until the driver has started afresh there
        self.loop: object | None = None  # the asyncio driver's: the event loop it is bound to

    def subscriber_state(self) -> SubscriberState:
        """The state of this cache's invalidation subscriber (made once a driver starts one)."""
        assert self.publisher is not None, "a cache with invalidation=None has no subscriber"
        self.bus_state = SubscriberState(self.guard, self.keys, self.publisher.origin, self.bus_settings, self.stats)
        return self.bus_state

    def after_fork(self) -> None:
        """In a forked child (invariant 11): nothing of the parent's process carries over.
        L1 empties and counts from zero, the origin id is new (the parent must hear the
        child's writes), breaker, repairs and locks are new, and L1 stays shut until the
        child's own subscriber confirms. The driver starts that subscriber (and new
        connections) on the child's first operation: `forked` tells it to."""
        self.guard.after_fork()
        self.l1._after_fork()
        self.l1.clear()
        self.gate.bypassed = 0
        self.gate.open = self.publisher is None
        self.stats = TierStats()
        self.burst_log = BurstLog()
        self.breaker = CircuitBreaker(self.breaker.failure_threshold, self.breaker.reset_timeout)
        self.node_breakers = {}
        self.repairs = Repairs(self.guard)
        self.lease_tokens = Tokens()
        if self.publisher is not None:
            self.publisher = Publisher(self.channel)
        self.bus_state = None
        self.tracking = False
        self.loop = None
        self.forked = True

    def check_usable(self) -> None:
        """Raise CacheClosed once the cache is closed (every operation asks first)."""
        if self.closed:
            raise CacheClosed(f"cache {self.name!r} is closed")

    def close(self) -> None:
        """Refuse every operation from now on, and serve nothing from L1 (invariant 11)."""
        self.closed = True
        self.guard.shut()

    def call_freshness(self, early_refresh: Any, stale_while_revalidate: Any, stale_if_error: Any) -> Freshness:
        """The freshness of a call that gives its own settings (None: the cache's)."""
        if not self.freshness_settable:
            freshness.settings(early_refresh, stale_while_revalidate, stale_if_error)  # still checked
            return self.freshness
        fresh = self.freshness.with_call(early_refresh, stale_while_revalidate, stale_if_error)
        if fresh.extended and not self.lease:
            raise ValueError("early_refresh and the stale windows refresh under the load lease: they need lease=True")
        return fresh

    # -- ttl ------------------------------------------------------------------------------

    def ttl_ms(self, ttl: Any) -> int | None:
        """Redis PX for a ttl argument: None = the cache default; inf or no default = None."""
        if ttl is None:
            return self.default_ttl_ms
        return _ms(ttl_seconds(ttl))

    def l1_ttl_for(self, ttl_ms: int | None) -> float:
        """L1 ttl for an entry whose Redis ttl is ttl_ms (None = no expiry): never longer."""
        if ttl_ms is None:
            return self.l1_ttl
        return min(self.l1_ttl, ttl_ms / 1000.0)

    # -- decoding and filling ----------------------------------------------------------------

    def decode_counted(
        self, data: bytes | None, redis_key: bytes, now_ms: float | None = None
    ) -> tuple[Any, int | None]:
        """(value, deadline) for what Redis answered, counted as an L2 hit or miss; (MISSING,
        None) for nothing, for bytes that do not decode (counted as a decode error too), and
        for a value past its logical expiry at now_ms (default: now)."""
        if data is None:
            self.stats.l2_misses += 1
            return MISSING, None
        try:
            value, deadline = self.codec.decode(data, redis_key)
        except DecodeError as exc:
            self.decode_failed(redis_key, exc)
            self.stats.l2_misses += 1
            return MISSING, None
        if deadline and data[0] & EXTENDED and deadline <= (time.time() * 1000.0 if now_ms is None else now_ms):
            self.stats.l2_misses += 1  # past its logical expiry: kept on only for a stale window
            return MISSING, None
        self.stats.l2_hits += 1
        return value, deadline

    def decode_failed(self, redis_key: bytes, exc: BaseException) -> None:
        """Count a value under one of our keys that cannot be read (corrupt, wrong type)."""
        self.stats.decode_errors += 1
        self.burst_log.error("tiercache %s: cannot read %r: %s", self.name, redis_key, exc)

    def fill(self, l1_key: Hashable, value: Any, l1_ttl: float, token: int) -> None:
        """The one way a single value read from Redis or loaded reaches L1."""
        if l1_ttl > 0 and (value is not None or self.cache_none):
            self.guard.fill(l1_key, token, value, l1_ttl)

    # -- errors and loads -----------------------------------------------------------------

    def breaker_for(self, node: str | None) -> CircuitBreaker:
        """The breaker of a cluster's master (by name); the cache's own for None."""
        if node is None:
            return self.breaker
        breaker = self.node_breakers.get(node)
        if breaker is None:
            made = CircuitBreaker(self.breaker.failure_threshold, self.breaker.reset_timeout)
            breaker = self.node_breakers.setdefault(node, made)
        return breaker

    def topology_due(self, now: float) -> bool:
        """On a cluster: whether to ask the cluster for its map of slots again now (a master
        failed since the last time, and that was TOPOLOGY_PAUSE seconds ago or more). Without
        it, the client keeps sending a dead master's slots to its address, whose open breaker
        then refuses them, after a replica has taken them over."""
        if not self.topology_stale or now - self.topology_asked < TOPOLOGY_PAUSE:
            return False
        self.topology_stale, self.topology_asked = False, now
        return True

    def keep_breakers(self, masters: set[str]) -> None:
        """Forget the breakers of nodes that are no longer masters (a failover's old master
        would report open forever)."""
        for name in list(self.node_breakers):
            if name not in masters:
                self.node_breakers.pop(name, None)

    def breaker_state(self) -> str:
        """The worst state of the breakers: open, else half_open, else closed."""
        breakers = [self.breaker, *list(self.node_breakers.values())]
        states = {breaker.reported_state for breaker in breakers}
        return next(state for state in ("open", "half_open", "closed") if state in states)

    def l2_failed(self, op: str, exc: BaseException, breaker: CircuitBreaker | None = None) -> None:
        """Count and log a Redis call that got no answer, and tell the breaker (the call's:
        on a cluster, its master's; and the cluster's map of slots is to be asked for again)."""
        self.topology_stale = True
        (breaker or self.breaker).failure()
        self.stats.l2_errors += 1
        label = (op, type(exc).__name__)
        self.stats.errors_by_op[label] = self.stats.errors_by_op.get(label, 0) + 1
        self.burst_log.error("tiercache %s: Redis %s failed: %r", self.name, op, exc)

    def master_seen(self, address: tuple[str, int] | None) -> None:
        """The subscriber connected to the Sentinel master at address: another one than
        before is a failover, counted (L1 was emptied when the old connection was lost)."""
        if address is None:
            return
        if self.master is not None and address != self.master:
            self.stats.failovers += 1
            log.warning("tiercache %s: the Redis master moved from %s:%s to %s:%s", self.name, *self.master, *address)
        self.master = address

    def l2_partly_failed(self, op: str, exc: BaseException) -> None:
        """Count and log a cluster node that did not answer its part of a batch the other
        nodes answered (no breaker is told: the call as a whole was answered)."""
        self.topology_stale = True
        self.stats.l2_errors += 1
        label = (op, type(exc).__name__)
        self.stats.errors_by_op[label] = self.stats.errors_by_op.get(label, 0) + 1
        self.burst_log.error("tiercache %s: a Redis Cluster node failed its part of %s: %r", self.name, op, exc)

    def write_refused(self, op: str, exc: BaseException) -> None:
        """Count and log a write Redis answered with an error reply (the breaker stays as it
        is: Redis did answer)."""
        self.stats.write_failures += 1
        self.burst_log.error("tiercache %s: Redis refused %s: %s", self.name, op, exc)

    def load_finished(self, started: float, ok: bool) -> None:
        """Count a loader call that began at started (on self.clock) and succeeded or not."""
        self.stats.load_duration.observe(self.clock() - started)
        if ok:
            self.stats.loads += 1
        else:
            self.stats.load_errors += 1


@dataclass(frozen=True, slots=True)
class Scope:
    """What a plan runs against: the cache's shared state, one namespace view's keys, and
    that view's compiled L1 front (for L1 look-ups that count as the fast path does)."""

    shared: Shared
    keys: KeyCodec
    front: TieredFront

    @property
    def path(self) -> tuple[str, ...]:
        return self.keys.path

    def l1_key(self, key: Any) -> Hashable:
        """key's L1 key in this view (TypeError unless str or bytes)."""
        check_key(key)
        return key if not self.keys.path else (self.keys.path, key)
