"""The figures of the Redis tier, the loader and the bus, and the stats() snapshot that
metrics.py exports (the L1 counts in C fields of LocalCache and L1Gate).

Only slow paths (a Redis round trip, a load, a message) touch TierStats, each with a plain
``+=`` or one C call (Histogram.observe): no lock per operation (invariant 1).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

from ..local import Histogram

if TYPE_CHECKING:
    from .shared import Shared

# Upper bounds (seconds) of the fixed histogram buckets; +Inf is implied.
L2_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LOAD_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Why L1 was emptied: the subscriber lost its connection or heard nothing past max_silence,
# a message went missing, a cache (this one or another process's) was cleared, or more
# invalidation work was pending than the subscriber holds (invalidation.MAX_PENDING).
FLUSH_REASONS: Final = ("disconnect", "silence", "message_lost", "clear", "overflow")


class TierStats:
    """Counters and histograms of the Redis tier, the loader and the bus."""

    FIELDS: Final = (
        "l2_hits",
        "l2_misses",
        "l2_errors",
        "decode_errors",
        "short_circuits",
        "pool_exhausted",
        "loads",
        "load_errors",
        "write_failures",
        "leases",
        "lease_waits",
        "lease_timeouts",
        "leased_fills_refused",
        "early_refreshes",
        "stale_served_revalidating",
        "stale_served_error",
        "refresh_failures",
        "invalidations_sent",
        "invalidations_received",
        "messages_lost",
        "bad_messages",
        "reconnects",
        "failovers",
    )

    def __init__(self) -> None:
        self.l2_hits = self.l2_misses = self.l2_errors = self.decode_errors = self.short_circuits = 0
        self.loads = self.load_errors = self.write_failures = self.pool_exhausted = 0
        self.leases = self.lease_waits = self.lease_timeouts = self.leased_fills_refused = 0
        self.early_refreshes = self.stale_served_revalidating = self.stale_served_error = self.refresh_failures = 0
        self.invalidations_sent = self.invalidations_received = 0
        self.messages_lost = self.bad_messages = self.reconnects = self.failovers = 0
        self.errors_by_op: dict[tuple[str, str], int] = {}
        self.flushes: dict[str, int] = dict.fromkeys(FLUSH_REASONS, 0)
        self.l2_duration: dict[str, Histogram] = {}  # op -> its round trips
        self.load_duration = Histogram(LOAD_BUCKETS)
        self.invalidation_lag = Histogram(LAG_BUCKETS)

    def as_dict(self) -> dict[str, int]:
        """The plain counters by name."""
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


def histogram_dict(histogram: Histogram) -> dict[str, Any]:
    """A Histogram as a plain mapping: count, sum, and cumulative counts by upper bound."""
    counts, total = histogram.snapshot()
    buckets: dict[float, int] = {}
    running = 0
    for bound, count in zip((*histogram.upper_bounds, math.inf), counts, strict=True):
        running += count
        buckets[bound] = running
    return {"count": running, "sum": total, "buckets": buckets}


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def snapshot(sh: Shared) -> dict[str, Any]:
    """Every figure of one cache as a plain mapping (what TieredCache.stats() returns)."""
    tier = sh.stats
    stats: dict[str, Any] = {f"l1_{k}": v for k, v in sh.l1.stats().items()}
    stats["l1_bypassed"] = sh.gate.bypassed
    stats.update(tier.as_dict())
    errors: dict[str, dict[str, int]] = {}
    for (op, error), count in dict(tier.errors_by_op).items():
        errors.setdefault(op, {})[error] = count
    stats["l2_errors_by_op"] = errors
    stats["fills_dropped"] = sh.guard.dropped
    stats["repairs_pending"] = sh.repairs.pending
    stats["repairs_done"] = sh.repairs.done
    stats["l1_flushes"] = dict(tier.flushes)
    stats["l1_serving"] = sh.gate.open
    stats["invalidation"] = None if sh.publisher is None else "tracking" if sh.tracking else "pubsub"
    stats["subscriber_connected"] = None if sh.bus_state is None else sh.bus_state.connected
    stats["breaker"] = sh.breaker_state()
    stats["l2_duration"] = {op: histogram_dict(h) for op, h in dict(tier.l2_duration).items()}
    stats["load_duration"] = histogram_dict(tier.load_duration)
    stats["invalidation_lag"] = histogram_dict(tier.invalidation_lag)
    l1_reads = stats["l1_hits"] + stats["l1_misses"]
    stats["l1_hit_ratio"] = _ratio(stats["l1_hits"], l1_reads)
    stats["l2_hit_ratio"] = _ratio(tier.l2_hits, tier.l2_hits + tier.l2_misses)
    # Every read asks L1 first unless L1 is shut; it is a hit if either tier answers.
    stats["hit_ratio"] = _ratio(stats["l1_hits"] + tier.l2_hits, l1_reads + stats["l1_bypassed"])
    return stats
