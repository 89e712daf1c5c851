"""Prometheus metrics of tiercache caches, read when Prometheus scrapes.

Nothing here runs on a cache operation. The L1 counts in C fields of the compiled
LocalCache; the Redis tier, the loader and the bus count with plain `+=` and fixed-bucket
histograms (one C call per observation) on their slow paths. A scrape calls
``cache.stats()`` and turns it into metric families, as client_python's own gc collector
does, so the figures Prometheus sees and the ones ``stats()`` returns are the same numbers.

Two ways to reach Prometheus:

* one process (or threads): ``CacheCollector(cache)`` / ``cache.register_metrics()``, and
  prometheus_client's exposition (``start_http_server`` below, or your web framework's
  /metrics handler);
* several worker processes (gunicorn and the like) with ``PROMETHEUS_MULTIPROC_DIR`` set:
  ``cache.register_metrics()`` starts a ``MultiprocessMirror`` that copies the cache's
  figures into prometheus_client's per-process files every ``interval`` seconds, and any
  process serving a registry with a ``MultiProcessCollector`` sums every worker's.

Label values come from a fixed set (cache name, tier, result, op, cause, reason): never keys.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

if TYPE_CHECKING:
    from .base import CacheBase

__all__ = [
    "CacheCollector",
    "MultiprocessMirror",
    "multiprocess_mode",
    "register",
    "start_http_server",
]


class Handle(Protocol):
    """What register() returns (a CacheCollector or a MultiprocessMirror): close() of the
    cache calls stop()."""

    def stop(self) -> None: ...


Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Spec(NamedTuple):
    """One metric family: its name (without _total), type, help text, labels after `cache`,
    and how to read its samples (label values, value) from a cache's stats()."""

    name: str
    kind: str  # counter | gauge | histogram
    doc: str
    labels: tuple[str, ...]
    samples: Callable[[dict[str, Any]], Iterable[tuple[tuple[str, ...], Any]]]
    multiprocess_mode: str = ""  # gauges: how prometheus_client combines workers' values


#: Error classes whose series exist from an op's first call (the usual ways Redis fails).
USUAL_ERRORS = ("ConnectionError", "TimeoutError")


def _errors_from_zero(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """l2_errors_by_op with a 0 for each usual error of every op called so far: a counter
    series that appears at its first increment is invisible to rate() and increase() until
    its second, so an outage's opening burst would not count."""
    errors = {op: dict.fromkeys(USUAL_ERRORS, 0) for op in stats["l2_duration"]}
    for op, counts in stats["l2_errors_by_op"].items():
        errors.setdefault(op, dict.fromkeys(USUAL_ERRORS, 0)).update(counts)
    return errors


def _one(field: str) -> Callable[[dict[str, Any]], list[tuple[tuple[str, ...], Any]]]:
    return lambda stats: [((), stats[field])]


def _flag(field: str) -> Callable[[dict[str, Any]], list[tuple[tuple[str, ...], Any]]]:
    """A True/False figure as 1/0; nothing at all where it does not apply (None)."""
    return lambda stats: [] if stats[field] is None else [((), 1 if stats[field] else 0)]


SPECS: tuple[Spec, ...] = (
    Spec(
        "tiercache_requests",
        "counter",
        "Reads answered by each tier: an L1 miss goes on to L2, an L2 miss to the loader.",
        ("tier", "result"),
        lambda s: [
            (("l1", "hit"), s["l1_hits"]),
            (("l1", "miss"), s["l1_misses"]),
            (("l2", "hit"), s["l2_hits"]),
            (("l2", "miss"), s["l2_misses"]),
        ],
    ),
    Spec(
        "tiercache_l1_bypassed",
        "counter",
        "Reads that went to L2 without asking L1, because L1 was shut (invalidation unhealthy).",
        (),
        _one("l1_bypassed"),
    ),
    Spec(
        "tiercache_loads",
        "counter",
        "Loader calls, by outcome.",
        ("result",),
        lambda s: [(("success",), s["loads"]), (("error",), s["load_errors"])],
    ),
    Spec(
        "tiercache_load_leases",
        "counter",
        "Fleet-wide load leases: taken (this process loads), waited (another process was "
        "loading), timed_out (the wait passed lease_ttl: loaded anyway), revoked (a write "
        "came first: the loaded value was not stored).",
        ("result",),
        lambda s: [
            (("taken",), s["leases"]),
            (("waited",), s["lease_waits"]),
            (("timed_out",), s["lease_timeouts"]),
            (("revoked",), s["leased_fills_refused"]),
        ],
    ),
    Spec(
        "tiercache_refreshes",
        "counter",
        "Background refreshes (core/freshness.py): early (XFetch, before the value expired), "
        "failed (the loader raised in a background refresh).",
        ("result",),
        lambda s: [(("early",), s["early_refreshes"]), (("failed",), s["refresh_failures"])],
    ),
    Spec(
        "tiercache_failovers",
        "counter",
        "Master changes seen behind Redis Sentinel (the subscriber reconnected to another "
        "master; L1 was emptied, as on every reconnect: writes the old master acknowledged may be lost).",
        (),
        _one("failovers"),
    ),
    Spec(
        "tiercache_stale_served",
        "counter",
        "Reads answered with a value past its TTL, by reason: revalidating (within "
        "stale_while_revalidate, a refresh under way), error (within stale_if_error, the loader raised).",
        ("reason",),
        lambda s: [(("revalidating",), s["stale_served_revalidating"]), (("error",), s["stale_served_error"])],
    ),
    Spec(
        "tiercache_load_duration_seconds",
        "histogram",
        "Time spent in the loader per call.",
        (),
        lambda s: [((), s["load_duration"])],
    ),
    Spec(
        "tiercache_l2_duration_seconds",
        "histogram",
        "Redis round trips by op (the Redis command; set_many for its pipelined SETs).",
        ("op",),
        lambda s: [((op,), h) for op, h in sorted(s["l2_duration"].items())],
    ),
    Spec(
        "tiercache_l2_errors",
        "counter",
        "Redis calls that failed (timeouts, lost connections), by op and error class. Every op "
        "called so far has its TimeoutError and ConnectionError series, at 0 until one fails, so "
        "rate() sees the first errors of an outage.",
        ("op", "reason"),
        lambda s: [
            ((op, error), n)
            for op, errors in sorted(_errors_from_zero(s).items())
            for error, n in sorted(errors.items())
        ],
    ),
    Spec(
        "tiercache_l2_decode_errors",
        "counter",
        "Values in Redis that could not be read (corrupt bytes, wrong type): counted as misses.",
        (),
        _one("decode_errors"),
    ),
    Spec(
        "tiercache_l2_short_circuits",
        "counter",
        "Redis calls refused at once by the open circuit breaker.",
        (),
        _one("short_circuits"),
    ),
    Spec(
        "tiercache_l2_pool_exhausted",
        "counter",
        "Redis calls given up because this process had no free connection within the pool's "
        "wait (not counted as Redis failing).",
        (),
        _one("pool_exhausted"),
    ),
    Spec(
        "tiercache_write_failures",
        "counter",
        "Writes that did not reach Redis (their local copies were dropped).",
        (),
        _one("write_failures"),
    ),
    Spec(
        "tiercache_repairs_pending",
        "gauge",
        "Keys whose write reached the writer but maybe not Redis, waiting to be deleted in Redis "
        "and invalidated everywhere (this process serves no copy meanwhile).",
        (),
        _one("repairs_pending"),
        "livesum",
    ),
    Spec(
        "tiercache_repairs",
        "counter",
        "Keys repaired: deleted in Redis and invalidated after a write-through that Redis missed.",
        (),
        _one("repairs_done"),
    ),
    Spec(
        "tiercache_l1_evictions",
        "counter",
        "Entries L1 removed on its own: to make room (size) or past their TTL (expired).",
        ("cause",),
        lambda s: [(("size",), s["l1_evictions"]), (("expired",), s["l1_expirations"])],
    ),
    Spec(
        "tiercache_l1_entries",
        "gauge",
        "Entries held in L1 (expired ones not yet reclaimed included).",
        (),
        _one("l1_size"),
        "livesum",
    ),
    Spec("tiercache_l1_capacity", "gauge", "Entries L1 may hold (l1_maxsize).", (), _one("l1_maxsize"), "livesum"),
    Spec(
        "tiercache_invalidations_sent",
        "counter",
        "Invalidation messages published (one per write, a bulk write is one).",
        (),
        _one("invalidations_sent"),
    ),
    Spec(
        "tiercache_invalidations_received",
        "counter",
        "Invalidation messages applied from other processes (or from Redis tracking).",
        (),
        _one("invalidations_received"),
    ),
    Spec(
        "tiercache_invalidation_lag_seconds",
        "histogram",
        "From a writer making its invalidation message to this process applying it.",
        (),
        lambda s: [((), s["invalidation_lag"])],
    ),
    Spec(
        "tiercache_invalidation_messages_lost",
        "counter",
        "Invalidation messages that never arrived (each flushed L1).",
        (),
        _one("messages_lost"),
    ),
    Spec(
        "tiercache_invalidation_bad_messages",
        "counter",
        "Messages on the invalidation channel that could not be read.",
        (),
        _one("bad_messages"),
    ),
    Spec(
        "tiercache_subscriber_reconnects",
        "counter",
        "Times the invalidation subscriber lost its connection and connected again.",
        (),
        _one("reconnects"),
    ),
    Spec(
        "tiercache_l1_fills_dropped",
        "counter",
        "Values read from Redis that were not put in L1 because their key was written or "
        "invalidated while the read was in flight.",
        (),
        _one("fills_dropped"),
    ),
    Spec(
        "tiercache_l1_flushes",
        "counter",
        "Times L1 was emptied, by reason: disconnect, silence, message_lost, overflow, clear.",
        ("reason",),
        lambda s: [((reason,), n) for reason, n in s["l1_flushes"].items()],
    ),
    Spec(
        "tiercache_subscriber_connected",
        "gauge",
        "1 while the invalidation subscription is live (absent without invalidation).",
        (),
        _flag("subscriber_connected"),
        "livemin",
    ),
    Spec(
        "tiercache_l1_serving",
        "gauge",
        "1 while L1 answers reads, 0 while it is shut.",
        (),
        _flag("l1_serving"),
        "livemin",
    ),
    Spec(
        "tiercache_breaker_state",
        "gauge",
        "Circuit breaker in front of Redis: 0 closed, 1 half-open, 2 open.",
        (),
        lambda s: [((), BREAKER_STATES[s["breaker"]])],
        "livemax",
    ),
)


FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}


def _histogram_buckets(histogram: dict[str, Any]) -> list[tuple[str, int]]:
    # Bounds are written as Python writes floats ("0.0005", "1.0"), which is how
    # prometheus_client writes them too for every bucket tiercache uses.
    return [
        ("+Inf" if bound == math.inf else repr(float(bound)), count) for bound, count in histogram["buckets"].items()
    ]


def families(caches: Iterable[CacheBase]) -> list[Family]:
    """Metric families for caches, one family per name with a `cache` label on each sample."""
    snapshots = [(cache.name, cache.stats()) for cache in caches]
    result = _described()
    for spec, family in zip(SPECS, result, strict=True):
        for name, stats in snapshots:
            for label_values, value in spec.samples(stats):
                if isinstance(family, HistogramMetricFamily):
                    family.add_metric([name, *label_values], _histogram_buckets(value), value["sum"])
                else:
                    family.add_metric([name, *label_values], value)
    return result


def _described() -> list[Family]:
    """The families without samples: what the registry checks clashes on, and what
    families() fills."""
    return [FAMILIES[spec.kind](spec.name, spec.doc, labels=["cache", *spec.labels]) for spec in SPECS]


def _check_cache(cache: object) -> None:
    if not (hasattr(cache, "stats") and hasattr(cache, "_shared")):
        raise TypeError(f"cache must be a TieredCache or AsyncTieredCache, got {type(cache).__name__}")


# -- one process: a collector read at scrape time --------------------------------------------


class CacheCollector:
    """A prometheus_client collector of one cache's figures, read at scrape time.

    With a registry (the default one unless told), it joins the one tiercache collector of
    that registry, so every cache's samples share one family per metric name; a cache name
    can be registered there once (ValueError otherwise). With registry=None, register it
    yourself or call collect(). Closing the cache unregisters it."""

    def __init__(self, cache: CacheBase, registry: CollectorRegistry | None = REGISTRY) -> None:
        _check_cache(cache)
        self.cache = cache
        self._group: _RegistryGroup | None = None
        if registry is not None:
            self._group = _RegistryGroup.join(registry, self)
        cache._shared.metrics.append(self)

    def collect(self) -> list[Family]:
        """This cache's metric families, read now."""
        return families([self.cache])

    def describe(self) -> list[Family]:
        """The metric names and types, for the registry's clash check."""
        return _described()

    def unregister(self) -> None:
        """Stop exporting this cache (closing the cache does this)."""
        group, self._group = self._group, None
        if group is not None:
            group.leave(self)

    # close() of the cache calls stop() on every metrics handle
    stop = unregister


class _RegistryGroup:
    """The one collector a registry holds for all the tiercache caches registered in it."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[Any, _RegistryGroup]] = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.members: dict[str, CacheCollector] = {}

    @classmethod
    def join(cls, registry: CollectorRegistry, collector: CacheCollector) -> _RegistryGroup:
        name = collector.cache.name
        with cls._lock:
            group = cls._by_registry.get(registry)
            if group is not None and name in group.members:
                raise ValueError(
                    f"a tiercache cache named {name!r} is already registered in this registry: "
                    "give each cache its own name, or unregister (close) the other one first"
                )
            if group is None:
                group = cls(registry)
                registry.register(group)  # raises if another collector uses our metric names
                cls._by_registry[registry] = group
            group.members[name] = collector
            return group

    def leave(self, collector: CacheCollector) -> None:
        with self._lock:
            if self.members.get(collector.cache.name) is collector:
                del self.members[collector.cache.name]
            if not self.members:
                self.registry.unregister(self)
                self._by_registry.pop(self.registry, None)

    def collect(self) -> list[Family]:
        return families(member.cache for member in list(self.members.values()))

    def describe(self) -> list[Family]:
        return _described()


# -- several processes: prometheus_client's multiprocess files -------------------------------


# prometheus_client has no public API to write a counter's absolute value into its
# multiprocess files, nor to ask whether it is in multiprocess mode (it decides once, when
# first imported). These two functions are the only places tiercache uses its internals:
# `values.ValueClass` (MultiProcessValue in that mode, with its `_multiprocess` marker).
# pyproject.toml pins prometheus-client to the releases this was tested with, and
# tests/test_metrics.py::test_the_prometheus_client_internals_we_use checks them.


def multiprocess_mode() -> bool:
    """Whether prometheus_client keeps values in PROMETHEUS_MULTIPROC_DIR files (it decides
    when it is first imported, from that environment variable)."""
    return bool(getattr(prometheus_client.values.ValueClass, "_multiprocess", False))


def _file_value(spec: Spec, sample: str, labelnames: list[str], labelvalues: list[str]) -> Any:
    """A value in this process's multiprocess file, set with .set(figure)."""
    return prometheus_client.values.ValueClass(
        spec.kind,
        spec.name,
        sample,
        labelnames,
        labelvalues,
        spec.doc,
        multiprocess_mode=spec.multiprocess_mode,
    )


class MultiprocessMirror:
    """Copies one cache's figures into prometheus_client's multiprocess files every
    `interval` seconds (from a daemon thread), and once more when stopped.

    Counters are summed over every worker that ever wrote; L1 entries and capacity are summed
    over live workers; subscriber_connected and l1_serving show the lowest, breaker_state the
    highest of the live workers. A figure is at most `interval` seconds old at a scrape."""

    _names: ClassVar[set[tuple[int, str]]] = set()  # (pid, cache name) mirrored in this process
    _names_lock = threading.Lock()

    def __init__(self, cache: CacheBase, interval: float = 1.0) -> None:
        _check_cache(cache)
        if not multiprocess_mode():
            raise RuntimeError(
                "prometheus_client is not in multiprocess mode: set PROMETHEUS_MULTIPROC_DIR "
                "to a writable directory before prometheus_client is first imported"
            )
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.cache = cache
        self.interval = float(interval)
        self._key = (os.getpid(), cache.name)
        with self._names_lock:
            if self._key in self._names:
                raise ValueError(
                    f"a tiercache cache named {cache.name!r} is already mirrored by this "
                    "process: give each cache its own name, or close the other one first"
                )
            self._names.add(self._key)
        self._values: dict[tuple[str, str, tuple[str, ...]], Any] = {}
        self._stopping = threading.Event()
        try:
            self.sync()  # an unwritable directory fails here, not later in the thread
        except BaseException:
            self._release_name()
            raise
        self._thread = threading.Thread(target=self._run, name=f"tiercache-metrics-{cache.name}", daemon=True)
        self._thread.start()
        cache._shared.metrics.append(self)
        # A worker that exits without close() (gunicorn max_requests, HUP, a deploy's TERM)
        # still writes its last counts. A weak reference: exiting must not keep caches alive.
        self._at_exit = functools.partial(_stop_mirror, weakref.ref(self))
        atexit.register(self._at_exit)

    def after_fork(self) -> None:
        """In a forked child (the cache's first operation there calls this): write the
        child's own figures to its own files, from a thread of its own (the parent's did
        not survive the fork)."""
        self._key = (os.getpid(), self.cache.name)
        with self._names_lock:
            self._names.add(self._key)
        self._values = {}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tiercache-metrics-{self.cache.name}", daemon=True)
        self._thread.start()

    def _release_name(self) -> None:
        with self._names_lock:
            self._names.discard(self._key)

    def _value(self, spec: Spec, sample: str, labelnames: list[str], labelvalues: list[str]) -> Any:
        key = (spec.name, sample, tuple(labelvalues))
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = _file_value(spec, sample, labelnames, labelvalues)
        return value

    def sync(self) -> None:
        """Write the cache's current figures (absolute values) to this process's files."""
        stats = self.cache.stats()
        for spec in SPECS:
            labelnames = ["cache", *spec.labels]
            for label_values, figure in spec.samples(stats):
                labelvalues = [self.cache.name, *label_values]
                if spec.kind == "counter":
                    self._value(spec, spec.name + "_total", labelnames, labelvalues).set(figure)
                elif spec.kind == "gauge":
                    self._value(spec, spec.name, labelnames, labelvalues).set(figure)
                else:  # the files keep each bucket's own count; the collector accumulates
                    below = 0
                    for le, cumulative in _histogram_buckets(figure):
                        bucket = self._value(spec, spec.name + "_bucket", [*labelnames, "le"], [*labelvalues, le])
                        bucket.set(cumulative - below)
                        below = cumulative
                    self._value(spec, spec.name + "_sum", labelnames, labelvalues).set(figure["sum"])

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.sync()
            except Exception:  # a full disk must not kill the thread: try again next time
                continue

    def stop(self) -> None:
        """Write the figures a last time and stop (closing the cache does this)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        atexit.unregister(self._at_exit)
        self._thread.join(self.interval + 1.0)
        try:
            self.sync()
        finally:
            self._release_name()


def _locks_after_fork() -> None:
    """A parent thread may have held these when the process forked."""
    _RegistryGroup._lock = threading.Lock()
    MultiprocessMirror._names_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_locks_after_fork)


def _stop_mirror(mirror: weakref.ref[MultiprocessMirror]) -> None:
    """At interpreter exit: write a mirror's last figures, if it is still there."""
    alive = mirror()
    if alive is not None:
        alive.stop()


# -- entry points ---------------------------------------------------------------------------


def register(cache: CacheBase, registry: CollectorRegistry | None = None, interval: float = 1.0) -> Handle:
    """What cache.register_metrics() does: a MultiprocessMirror when prometheus_client is in
    multiprocess mode, else a CacheCollector in registry (the default registry if None)."""
    if multiprocess_mode() and registry is None:
        return MultiprocessMirror(cache, interval)
    return CacheCollector(cache, REGISTRY if registry is None else registry)


def start_http_server(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve /metrics on addr:port from a daemon thread: loopback unless told otherwise.

    registry defaults to the default registry, or, in multiprocess mode, to a fresh one with
    a MultiProcessCollector (every worker's files summed). Returns (server, thread) as
    prometheus_client does; server.server_port tells the port when port=0."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535, got {port!r}")
    if registry is None:
        if multiprocess_mode():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
    return prometheus_client.start_http_server(port, addr=addr, registry=registry)
