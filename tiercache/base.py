"""CacheBase: what TieredCache and AsyncTieredCache share besides the plans: construction,
namespace views, introspection and metrics. The drivers (cache.py, aio.py) add how a plan's
requests are carried out, and the public methods."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import redis as redis_py

from . import clients
from .codec import KeyCodec
from .config import Config, from_environment, read_file
from .core.resilience import RedisErrors
from .core.shared import CacheOptions, Scope, Shared
from .core.stats import snapshot
from .local import LocalCache, TieredFront

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from typing_extensions import Unpack

    from .metrics import Handle

log = logging.getLogger(__name__)

Key = str | bytes
"""What a tiered cache's keys may be."""

_View = TypeVar("_View", bound="CacheBase")

# The type variables of both drivers' signatures: get(key, default: D, model: type[M]) ->
# M | D; get_or_load(key: K, loader: Callable[[K], V]) -> V, so a loader typed for str keys
# fits a call with a str key.
D = TypeVar("D")
M = TypeVar("M")
V = TypeVar("V")
K = TypeVar("K", bound=Key)


def pool_like(client: Any) -> Any:
    """A new connection pool to the server client talks to, with its settings, size and
    connection class (TCP, TLS or unix socket; a Sentinel master's pool asks its sentinels
    where the master is): for a connection of tiercache's own (the tracker), or for the
    client in a forked child."""
    pool = client.connection_pool
    sizes = {"max_connections": pool.max_connections}
    if hasattr(pool, "timeout"):  # a blocking pool's wait for a free connection
        sizes["timeout"] = pool.timeout
    if clients.is_sentinel(client):
        return type(pool)(
            pool.service_name,
            pool.sentinel_manager,
            connection_class=pool.connection_class,
            **sizes,
            **pool.connection_kwargs,
        )
    return type(pool)(connection_class=pool.connection_class, **sizes, **pool.connection_kwargs)


# What a forked child inherited and must never close: an asyncio connection closed in the
# child goes through the event loop the child copied, whose epoll descriptor it shares
# with the parent, and would take the parent's socket off the parent's loop.
_inherited: list[Any] = []


# What a redis-py error means to the cache (redis.asyncio raises the same classes).
# asyncio.TimeoutError is the built-in TimeoutError from Python 3.11 on, not before.
# On Redis Cluster, a slot no node serves (CLUSTERDOWN, a master down with no replica to take
# over, a failover in progress) is Redis not answering for that key, not an error reply.
REDIS_ERRORS = RedisErrors(
    unavailable=(
        redis_py.ConnectionError,
        redis_py.TimeoutError,
        OSError,
        asyncio.TimeoutError,
        redis_py.exceptions.ClusterDownError,
        redis_py.exceptions.TryAgainError,
        redis_py.exceptions.MasterDownError,
        redis_py.exceptions.RedisClusterException,
    ),
    reply=(redis_py.RedisError,),
    busy=(redis_py.exceptions.MaxConnectionsError,),
)


# The rule for process lifecycle (invariant 11): what a fork copies from the parent (locks a
# thread may hold, ids, counters, connections, threads that did not survive) is renewed in
# the child by Shared.after_fork and Parts.start before the child's first operation; what
# a cache owns is let go by close(), or by its finalizer when it is collected unclosed.


class Parts:
    """What a driver keeps for one cache, beside Shared, shared by all its views: the
    single-flight, the subscriber, and the Redis client if the cache made it (from_url).
    Each driver says how to start them (in a new or a forked process) and how to let go of
    them when the cache is collected without close()."""

    owned_client: Any = None
    embedded: str | None = None  # the directory of the embedded Redis the cache's URL named

    def start(self, cache: Any) -> None:
        """New single-flight and subscriber, for a new cache or one in a forked child."""
        raise NotImplementedError

    def after_fork(self, cache: Any) -> None:
        """In a forked child, at once: let go of the parent's connections (the child makes
        its own on its first operation)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Stop what runs and close what is owned, from a finalizer: no waiting, no awaiting."""
        raise NotImplementedError


# Every open cache made in this process (not views), for the fork handler.
_live_caches: weakref.WeakSet[CacheBase] = weakref.WeakSet()


# Taken by the first operations of a forked child, so that two threads it starts cannot both
# restart one cache.
_restarting = threading.Lock()


def _after_fork_in_child() -> None:
    global _restarting
    _restarting = threading.Lock()  # a parent thread may have held it
    for cache in list(_live_caches):
        cache._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _collected(kind: str, shared: Shared, parts: Parts) -> None:
    """A cache was garbage-collected without close(): stop its subscriber and close its
    client (its L1 then serves nothing), and say so as asyncio does for unclosed loops."""
    if shared.closed:
        return
    warnings.warn(f"unclosed {kind} {shared.name!r}: close() it, or use it with `with`", ResourceWarning, 2)
    shared.close()
    parts.abandon()


class CacheBase(TieredFront):
    """Construction, views and introspection, for both drivers; the lifecycle (close, fork,
    garbage collection) in the parts both share."""

    _parts: Parts
    _shared: Shared
    _keys: KeyCodec
    _scope: Scope
    _root: CacheBase | None = None  # a view's cache, kept alive while the view is

    def __init__(self, redis: Any, *, name: str, **options: Unpack[CacheOptions]) -> None:
        if redis is None:
            raise TypeError("redis must be a redis-py client; use from_url() to make one")
        if not hasattr(redis, "connection_pool") and not clients.is_cluster(redis):
            raise TypeError(f"redis must be a redis-py client, got {type(redis).__name__}")
        client_options = clients.connection_kwargs(redis)
        if client_options.get("decode_responses"):
            raise ValueError(
                "redis client made with decode_responses=True: tiercache stores bytes (its values "
                "are not text); give it a client without that option"
            )
        db = client_options.get("db", 0)
        sharded = clients.is_cluster(redis)
        self._start(redis, Shared(name=name, errors=REDIS_ERRORS, db=db, sharded=sharded, **options))

    def _start(self, redis: Any, shared: Shared) -> None:
        """A new cache on the client redis (None: the memory backend's store) and shared."""
        self._shared = shared
        self._parts = self._new_parts()
        self._redis = redis
        self._view(self._shared.keys)
        self._parts.start(self)
        _live_caches.add(self)
        weakref.finalize(self, _collected, type(self).__name__, self._shared, self._parts)

    @staticmethod
    def _new_parts() -> Parts:
        """The driver's Parts for a new cache."""
        raise NotImplementedError

    def _after_fork(self) -> None:
        """In a forked child: the shared state forgets the parent (Shared.after_fork), the
        client's pool lets go of the parent's connections; the driver starts afresh on the
        child's first operation (_restart)."""
        if self._shared.closed:
            return
        self._shared.after_fork()
        self._parts.after_fork(self)

    def _restart(self) -> None:
        """Called by the drivers before an operation when the cache is closed or forked."""
        sh = self._shared
        sh.check_usable()
        with _restarting:
            if not sh.forked:  # another thread of the child got here first
                return
            sh.forked = False
            self._parts.start(self)
            for handle in list(sh.metrics):
                restart = getattr(handle, "after_fork", None)
                if restart is not None:
                    restart()

    def _view(self, keys: KeyCodec) -> None:
        self._keys = keys
        self._scope = Scope(self._shared, keys, self)
        self._bind_l1(self._shared.l1, keys.path or None, self._shared.gate)

    # -- views and introspection -----------------------------------------------------------

    @classmethod
    def from_config(cls: type[_View], mapping: Mapping[str, Any]) -> _View:
        """A cache from a mapping of fields (tiercache/config.py: url, name, default_ttl,
        key_prefix, l1 maxsize/ttl/policy, serializer, compression, timeouts, invalidation,
        ...). Raises ConfigError naming the field that is wrong and what it accepts."""
        config = Config(mapping)
        assert config.name is not None
        if config.in_memory:
            kept: _View = cls.in_memory(  # type: ignore[attr-defined]  # each driver has one
                name=config.name, enabled=config.enabled, **config.options
            )
            return kept
        made: _View = cls.from_url(  # type: ignore[attr-defined]  # each driver has one
            config.url, name=config.name, redis_options=config.redis_options, **config.options
        )
        return made

    @classmethod
    def from_env(cls: type[_View], prefix: str = "TIERCACHE_", environ: Mapping[str, str] | None = None) -> _View:
        """from_config of the environment variables under prefix (TIERCACHE_NAME,
        TIERCACHE_URL, TIERCACHE_L1_MAXSIZE, ...); another variable under the prefix that is
        no field is a ConfigError too."""
        return cls.from_config(from_environment(os.environ if environ is None else environ, prefix))

    @classmethod
    def from_config_file(cls: type[_View], path: str | os.PathLike[str]) -> _View:
        """from_config of a YAML file (the document, or its `tiercache:` section); needs
        PyYAML (the `yaml` extra)."""
        return cls.from_config(read_file(path))

    def namespace(self: _View, name: str) -> _View:
        """A view whose keys cannot collide with this one's or any other namespace's.

        Views share the L1, the Redis client and the counters; they nest."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._root = self._root or self
        view._view(self._keys.child(name))
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
    def l1(self) -> LocalCache:
        """The in-process tier (a LocalCache), shared by every view."""
        return self._shared.l1

    @property
    def redis(self) -> Any:
        """The redis-py client of the Redis tier."""
        return self._redis

    def cached_locally(self, key: Key) -> bool:
        """Whether this process's L1 holds a live copy of key: no Redis call, no counter."""
        return self._scope.l1_key(key) in self._shared.l1

    def redis_key(self, key: Key) -> bytes:
        """The Redis key that holds key in this namespace."""
        return self._keys.redis_key(key)

    def stats(self) -> dict[str, Any]:
        """Every figure the Prometheus collector exports, as a plain mapping, plus hit ratios.

        Counters since the cache was made: l1_* (hits, misses, sets, deletes, evictions,
        expirations, and bypassed: reads while L1 was shut), the Redis tier (l2_*), loads,
        invalidations, fills dropped, L1 flushes by reason. State: l1_size, l1_maxsize,
        l1_serving, subscriber_connected, breaker. Histograms (count, sum, cumulative
        buckets): l2_duration by op, load_duration, invalidation_lag. Ratios are None until
        there is something to divide by."""
        return snapshot(self._shared)

    def register_metrics(self, registry: CollectorRegistry | None = None, interval: float = 1.0) -> Handle:
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
