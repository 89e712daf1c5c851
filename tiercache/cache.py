"""TieredCache: the sync driver. Every operation is a plan in core/plans.py, and the
invalidation subscriber a plan in core/invalidation.py; this file only says how their
requests are carried out with redis-py's blocking client."""

from __future__ import annotations

import functools
import itertools
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import clients, embedded, memory
from ._validate import Seconds
from .base import CacheBase, D, K, Key, M, Parts, V, pool_like
from .codec import key_slot
from .core import invalidation, plans, sharding
from .core import requests as rq
from .core.cached import CallKeys, Decorated, check_decorated
from .core.resilience import RedisCall, client_options, own_copy
from .core.shared import CacheOptions
from .errors import CacheClosed, CacheUnavailable, RedisReplyError
from .loading import Backgrounds, SingleFlight
from .local import ECHO_LOST, ECHO_NOTHING, ECHO_ONLY, MISSING, drop_echoes

if TYPE_CHECKING:
    from typing_extensions import Unpack

_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class QueuedPool(redis_py.BlockingConnectionPool):
    """The pool of a client from_url makes: callers past max_connections wait up to
    `timeout` seconds for a free connection; if none comes, MaxConnectionsError (this
    process is busy) rather than redis-py's plain ConnectionError (which reads as Redis
    being down and would open the breaker)."""

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped in redis-py
        except redis_py.ConnectionError as exc:
            if isinstance(exc.__context__, queue.Empty):  # the wait for a free connection ran out
                raise redis_py.exceptions.MaxConnectionsError(f"no free connection within {self.timeout} s") from exc
            raise


class TieredCache(CacheBase):
    """A two-tier cache: the compiled L1 in this process, Redis shared by all of them."""

    _parts: SyncParts

    @staticmethod
    def _new_parts() -> SyncParts:
        return SyncParts()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until the invalidation subscription is confirmed and L1 serves; True if so.

        Until then every read goes to Redis (L1 neither serves nor stores)."""
        if self._shared.closed or self._shared.forked:
            self._restart()
        subscriber = self._parts.subscriber
        if subscriber is None:
            return True
        return subscriber.ready.wait(timeout) and self.l1_enabled

    @classmethod
    def from_url(
        cls, url: str, *, name: str, redis_options: dict[str, Any] | None = None, **options: Unpack[CacheOptions]
    ) -> TieredCache:
        """A cache on a new redis-py client for url: one Redis (redis://, rediss://,
        unix://), Redis Cluster (redis+cluster://host:port,host:port/) or the master of a
        Sentinel service (redis+sentinel://host:port,host:port/service/db); see
        tiercache/clients.py. A URL tiercache cannot use raises ValueError saying why.

        redis_options go to the client: socket_timeout and socket_connect_timeout default to
        0.5 s, retries are off (the circuit breaker takes over; a retry after a timeout
        would apply an incr twice; a cluster client still follows a slot that moved);
        max_connections (100) bounds the pool, and a caller past it waits up to timeout
        (2 s) for a free connection (one Redis only)."""
        kind = clients.kind_of_url(url)
        directory = None
        if kind == "embedded":
            directory = embedded.directory_of(url)
            url, kind = clients.embedded_url(url), "redis"
        if kind == "cluster":
            client = clients.cluster_client(url, client_options(redis_options or {}, Retry(NoBackoff(), 0)))
        elif kind == "sentinel":
            client = clients.sentinel_client(url, client_options(redis_options or {}, Retry(NoBackoff(), 0)))
        else:
            pool = QueuedPool.from_url(url, **client_options(redis_options or {}, Retry(NoBackoff(), 0)))
            client = redis_py.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True
        try:
            cache = cls(client, name=name, **options)
        except BaseException:
            _close_quietly(client)
            raise
        cache._parts.owned_client = client
        cache._parts.embedded = directory
        # A plain client of ours on one Redis (lean_call); not one asked to retry or to cache
        # client-side, which redis.Redis's own path does and lean_call would skip.
        cache._parts.lean = kind == "redis" and not LEAN_UNSAFE.intersection(redis_options or {})
        return cache

    @staticmethod
    def in_memory(*, name: str, enabled: bool = True, **options: Unpack[CacheOptions]) -> TieredCache:
        """A cache with no Redis: its entries live in this process only (tiercache/memory.py),
        for tests and single-process tools; with enabled=False it keeps nothing at all."""
        return MemoryTieredCache(name=name, enabled=enabled, **options)

    # -- the driver ---------------------------------------------------------------------------

    def _run(self, plan: rq.Plan[_T], repairing: bool = False) -> _T:
        if self._shared.closed or self._shared.forked:
            self._restart()
        if self._shared.repairs.pending and not repairing:  # writes to mend first (repair.py)
            self._run(plans.repair(self._scope), repairing=True)
        # The loop rq.Stepper runs (and the asyncio driver uses), written out: this is the
        # L2-hit path, and the Stepper object and its calls cost ~0.4 us a get.
        carry_out = self._carry_out
        try:
            request = next(plan)
            while True:
                try:
                    reply = carry_out(request)
                except BaseException as exc:
                    request = plan.throw(exc)
                else:
                    request = plan.send(reply)
        except StopIteration as done:
            value: _T = done.value
            return value

    def _carry_out(self, request: rq.Request) -> Any:
        if isinstance(request, rq.Call):
            return _not_awaitable(self, request.func(*request.args))
        if isinstance(request, rq.Flight):
            plan = request.plan
            return self._parts.flights.run(request.key, lambda: self._run(plan))
        if isinstance(request, rq.Pause):
            return time.sleep(request.seconds)
        if type(request) is rq.Get and self._parts.lean:
            return self._parts.reads.get(self._send_reads, request.key)
        if isinstance(request, rq.Background):
            background = request.plan
            return self._parts.backgrounds.start(request.key, lambda: self._run(background))
        if isinstance(request, rq.Update):
            if self._shared.sharded:
                return self._on_cluster(self._carry_out_update, request)
            return self._carry_out_update(request)
        if self._shared.closed:  # a plan still running on another thread (a refresh): no Redis after close()
            raise CacheClosed(f"cache {self._shared.name!r} is closed")
        if self._shared.sharded:
            return self._on_cluster(self._carry_out_sharded, request)
        with RedisCall(self._shared, request.op):
            if not isinstance(request, rq.Pipeline):
                if self._parts.lean:
                    words = rq.raw_args(request)
                    if words is not None:
                        return lean_call(self._redis.connection_pool, words)
                return rq.issue(self._redis, request)
            with self._redis.pipeline(transaction=request.transaction) as pipe:
                for command in request.commands:
                    rq.issue(pipe, command)
                return pipe.execute()

    def _on_cluster(self, carry_out: Callable[[Any], Any], request: Any) -> Any:
        """carry_out(request) on a cluster; when a master failed it, or part of it, the map of
        slots is asked for again (at most every TOPOLOGY_PAUSE), so calls follow a failover."""
        try:
            return carry_out(request)
        finally:
            if self._shared.topology_due(time.monotonic()):
                clients.ask_map(self._shared, self._redis)

    def _carry_out_sharded(self, request: rq.Command | rq.Pipeline) -> Any:
        """A request on Redis Cluster: in the cluster-safe steps of core/sharding.py, or for a
        SCAN, one step on one master (clients.scan_cursor); one RedisCall for all of it."""
        if isinstance(request, rq.Scan):
            return self._scan_masters(request)
        with RedisCall(self._shared, request.op, self._shared.breaker_for(clients.master_of(self._redis, request))):
            master_of = functools.partial(clients.master_of_slot, self._redis)
            step = rq.Stepper(sharding.carry(self._shared, request, master_of))
            while not step.done:
                try:
                    reply = self._issue_sharded(step.request)
                except BaseException as exc:  # a KeyboardInterrupt too: the plan still announces the write
                    step.throw(exc)
                else:
                    step.send(reply)
            return step.result

    def _issue_sharded(self, request: rq.Command | rq.Pipeline) -> Any:
        if isinstance(request, rq.Publish):
            return clients.spublish(self._redis, request)
        if not isinstance(request, rq.Pipeline):
            return rq.issue(self._redis, request)
        if not request.transaction and all(type(command) is rq.MGet for command in request.commands):
            return mget_by_node(self._redis, request.commands)
        with self._redis.pipeline(transaction=request.transaction) as pipe:
            for command in request.commands:
                rq.issue(pipe, command)
            return pipe.execute(raise_on_error=False)

    def _scan_masters(self, scan: rq.Scan) -> tuple[int, list[bytes]]:
        masters = clients.masters(self._redis)
        master, cursor = clients.scan_cursor(scan.cursor)
        if master >= len(masters):  # a master left the cluster meanwhile
            return 0, []
        with RedisCall(self._shared, scan.op, self._shared.breaker_for(masters[master].name)):
            node = self._redis.get_redis_connection(masters[master])
            cursor, found = node.scan(cursor, match=scan.match, count=scan.count)
        return clients.next_cursor(master, len(masters), int(cursor)), found

    def _carry_out_update(self, update: rq.Update) -> Any:
        """Carry out an Update (_update) as one Redis call. Whenever nothing was written
        (change raised or found nothing to do, Redis refused or did not answer, the breaker
        was open, contention won), the riders go alone: the invalidation is numbered, and
        receivers must see no gap."""
        written: list[bool] = []
        try:
            with RedisCall(self._shared, update.op, self._update_breaker(update)):
                return self._update(update, written)
        finally:
            if not written:
                self._ride_alone(update.riders)

    def _update_breaker(self, update: rq.Update) -> Any:
        """The breaker of the master of update's key (the cache's own on one Redis)."""
        if not self._shared.sharded:
            return self._shared.breaker
        return self._shared.breaker_for(clients.master_of_slot(self._redis, key_slot(update.key)))

    def _update(self, update: rq.Update, written: list[bool]) -> Any:
        """WATCH, GET, change, MULTI/SET/riders/EXEC, again (after a short pause) while
        another client changed the key in between; written gets True once EXEC ran."""
        inside, after = sharding.split_riders(update.riders) if self._shared.sharded else (update.riders, ())
        with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(rq.UPDATE_ATTEMPTS):
                pipe.watch(update.key)
                outcome = update.change(pipe.get(update.key))
                if outcome[0] is rq.NO_CHANGE:
                    pipe.reset()
                    return outcome[1]
                data, px, result = outcome
                rq.stage_update(pipe, update.key, data, px, inside)
                try:
                    pipe.execute()
                except redis_py.WatchError:
                    time.sleep(rq.update_pause(attempt))
                    continue
                written.append(True)
                self._ride_alone(after)  # on a cluster, the PUBLISH once the MULTI is done
                return result
        raise redis_py.ResponseError(rq.CONTENDED.format(op=update.op, attempts=rq.UPDATE_ATTEMPTS))

    def _ride_alone(self, riders: tuple[rq.Command, ...]) -> None:
        """An Update that wrote nothing still sends its riders (its numbered invalidation);
        if Redis cannot take them either, the subscribers are cut off from it too."""
        if riders:
            try:
                if self._shared.sharded:
                    for rider in riders:  # no PUBLISH in a cluster's pipeline
                        self._issue_sharded(rider)
                    return
                with self._redis.pipeline(transaction=False) as pipe:
                    for rider in riders:
                        rq.issue(pipe, rider)
                    pipe.execute()
            except (redis_py.RedisError, redis_py.exceptions.RedisClusterException):
                pass

    def _send_reads(self, keys: list[bytes]) -> list[Any]:
        """One round trip of ReadTrips: GET for one key, MGET for more; one RedisCall."""
        with RedisCall(self._shared, rq.Get.op):
            if len(keys) == 1:
                return [lean_call(self._redis.connection_pool, (b"GET", keys[0]))]
            replies: list[Any] = lean_call(self._redis.connection_pool, (b"MGET", *keys))
            return replies

    # -- reads ----------------------------------------------------------------------------------

    if TYPE_CHECKING:
        # get() itself is TieredFront.get in C: an L1 hit never reaches Python code. Keys are
        # typed narrower than TieredFront.get's, which takes anything at run time and leaves
        # a wrong key to the slow path's TypeError.
        @overload  # type: ignore[override]
        def get(self, key: Key) -> Any: ...
        @overload
        def get(self, key: Key, default: D) -> Any | D: ...
        @overload
        def get(self, key: Key, default: D, model: type[M]) -> M | D: ...
        @overload
        def get(self, key: Key, *, model: type[M]) -> M | None: ...
        def get(self, key: Key, default: Any = None, model: Any = None) -> Any:
            """The value for key from L1, else Redis, else the loader; default on a miss."""

    def _get_slow(self, key: Any, default: Any, model: Any) -> Any:
        sh = self._shared
        if sh.loader is not None:
            return self._run(plans.get_with_loader(self._scope, key, default, model))
        if model is None and self._parts.lean and not (sh.closed or sh.forked or sh.repairs.pending):
            value = self._read_lean(key)
        else:
            value = self._run(plans.get(self._scope, key, model))
        return default if value is MISSING else value

    def _read_lean(self, key: Any) -> Any:
        """plans.get(key) with no model (so plans.read) as _run and _carry_out would do it on
        the lean path, written out: this is the L2-hit get, and the plan machinery (the
        generator, the request object, the driver's dispatch) was a third of tiercache's own
        work on it. Keep it in step with plans.read; anything rarer goes back to plans."""
        scope, sh = self._scope, self._shared
        l1_key = scope.l1_key(key)
        rkey = scope.keys.redis_key(key)
        token = sh.guard.begin_read()
        try:
            data = self._parts.reads.get(self._send_reads, rkey)
        except (CacheUnavailable, RedisReplyError) as exc:
            return plans.unread(sh, rkey, exc)
        value, l1_ttl = plans.landed(sh, rkey, data)
        if l1_ttl is None:
            l1_ttl = self._run(plans.l1_ttl_from_redis(scope, rkey))
        sh.fill(l1_key, value, l1_ttl, token)
        return value

    def get_or_load(
        self,
        key: K,
        loader: Callable[[K], V],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        early_refresh: bool | float | None = None,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> V:
        """L1, then Redis, then loader(key); what the loader returns is stored in both tiers
        (under tags, if given: see invalidate_tags).

        Concurrent calls for one key in this process make one loader call; its exception
        reaches every caller and nothing is cached. None is not cached unless cache_none.
        early_refresh, stale_while_revalidate, stale_if_error: for this call (None: the
        cache's; README: Hot keys)."""
        fresh = self._shared.call_freshness(early_refresh, stale_while_revalidate, stale_if_error)
        value: V = self._run(plans.get_or_load(self._scope, key, loader, ttl, tags=tags, fresh=fresh))
        return value

    def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """A dict of the keys found in L1 or Redis (one MGET for all L1 misses)."""
        return self._run(plans.get_many(self._scope, keys))

    def keys(self, match: str = "*", count: int = 1000) -> Iterator[Key]:
        """This namespace's keys whose stored form matches the Redis glob match (not nested
        namespaces' keys), listed with SCAN (never KEYS), count keys a step. As with SCAN, a
        key may come twice and keys written meanwhile may be missed; raises
        CacheUnavailable if Redis does not answer."""
        plans.check_scan(match, count)

        def scan() -> Iterator[Key]:
            cursor = 0
            while True:
                cursor, found = self._run(plans.scan_keys(self._scope, cursor, match, count))
                yield from found
                if not cursor:
                    return

        return scan()

    def cached(
        self,
        ttl: Seconds | None = None,
        key: str | None = None,
        condition: Callable[..., Any] | None = None,
        unless: Callable[[Any], Any] | None = None,
        cache_none: bool | None = None,
        name: str | None = None,
        tags: Iterable[str] | None = None,
        early_refresh: bool | float | None = None,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> Callable[[Callable[_P, _R]], CachedFunction[_P, _R]]:
        """Decorate a function (or method) so its result is cached: get_or_load under a key
        built from its arguments (core/cached.py), so single-flight and the fleet-wide lease
        apply. key: a template such as "user:{user_id}" (checked here); name: what stands for
        the function in keys without a template (default: its module and qualified name);
        condition(*args, **kwargs) false: call the function, no cache; unless(result) true:
        not stored; cache_none: store None results (default: the cache's); tags: templates
        like key's ("tenant:{tenant_id}"), the tags results are stored under;
        early_refresh, stale_while_revalidate, stale_if_error: as get_or_load's. The wrapper
        has .invalidate(*args, **kwargs) and .cache_key(*args, **kwargs)."""
        fresh = self._shared.call_freshness(early_refresh, stale_while_revalidate, stale_if_error)

        def decorate(func: Callable[_P, _R]) -> CachedFunction[_P, _R]:
            check_decorated(func, False, name is not None, key is not None)
            keys = CallKeys(func, key, name, tags)
            return CachedFunction(self, func, keys, ttl, condition, unless, cache_none, fresh)

        return decorate

    def exists(self, key: Key) -> bool:
        """True if key is in L1 or Redis (False if Redis cannot be asked)."""
        return self._run(plans.exists(self._scope, key))

    def ttl(self, key: Key) -> float | None:
        """Seconds key has left in Redis; math.inf if it never expires; None if absent."""
        return self._run(plans.ttl(self._scope, key))

    # -- writes -----------------------------------------------------------------------------

    def set(self, key: Key, value: Any, ttl: Seconds | None = None, tags: Iterable[str] | None = None) -> bool:
        """writer(key, value), then Redis, then L1. False if Redis could not be written
        (the local copy is dropped); raises CacheUnavailable instead when strict. tags: see
        invalidate_tags."""
        return self._run(plans.set(self._scope, key, value, ttl, tags))

    def set_many(
        self,
        mapping: Mapping[Key, Any] | Iterable[tuple[Key, Any]],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
    ) -> bool:
        """set for every pair, in one round trip; nothing is written if any value cannot be."""
        return self._run(plans.set_many(self._scope, mapping, ttl, tags))

    def delete(self, key: Key) -> bool:
        """writer(key, DELETED), then Redis and L1. True if Redis held the key."""
        return bool(self._run(plans.delete(self._scope, [key], "delete")))

    def delete_many(self, keys: Iterable[Key]) -> int:
        """delete for every key, in one round trip: how many Redis held (0 if unreachable)."""
        return self._run(plans.delete(self._scope, list(keys), "delete_many")) or 0

    def expire(self, key: Key, ttl: Seconds | None) -> bool:
        """Give key a new ttl from now (None: the default; inf: never); False if absent."""
        return self._run(plans.expire(self._scope, key, ttl))

    def incr(self, key: Key, amount: int = 1, ttl: Seconds | None = None) -> int:
        """Add amount to the integer under key (0 if absent) in Redis; the new value.

        A counter this call creates gets ttl (None: the default). Counters are read from
        Redis, never held in L1 by a write. Raises CacheUnavailable if Redis is down."""
        return self._run(plans.incr(self._scope, key, amount, ttl))

    def delete_match(self, match: str) -> int:
        """Delete every key of this namespace (not nested ones') whose stored form matches
        the Redis glob match, in Redis (SCAN + UNLINK in batches) and, by one message, in
        every process's L1: how many Redis held."""
        return self._run(plans.delete_match(self._scope, match))

    def delete_prefix(self, prefix: str) -> int:
        """delete_match for the keys that start with prefix (its glob characters escaped)."""
        return self._run(plans.delete_prefix(self._scope, prefix))

    def invalidate_tags(self, tags: Iterable[str]) -> int:
        """Delete every key of this namespace written with any of tags (set, set_many,
        get_or_load or cached with tags=), in Redis and every process's L1: how many Redis
        held. Keys tagged while it runs may be left for the next call."""
        return self._run(plans.invalidate_tags(self._scope, tags))

    def get_field(self, key: Key, field: Any, default: Any = None) -> Any:
        """One field of the dict under key, or default (TypeError if key holds no dict)."""
        return self._run(plans.get_field(self._scope, key, field, default))

    def set_field(self, key: Key, field: Any, value: Any, ttl: Seconds | None = None) -> bool:
        """Set one field of the dict under key, atomically in Redis (a new key gets ttl; an
        existing one keeps its TTL); every other process's L1 drops the key."""
        return bool(self._run(plans.set_field(self._scope, key, field, value, ttl)))

    def incr_field(self, key: Key, field: Any, amount: int | float = 1) -> int | float:
        """Add amount to a numeric field of the dict under key, atomically: the new value."""
        value: int | float = self._run(plans.incr_field(self._scope, key, field, amount))
        return value

    def delete_field(self, key: Key, field: Any) -> bool:
        """Remove one field of the dict under key, atomically: whether it was there."""
        return bool(self._run(plans.delete_field(self._scope, key, field)))

    def append(self, key: Key, value: Any, max_len: int | None = None, ttl: Seconds | None = None) -> int:
        """Append value to the list under key (newest last, the oldest dropped past max_len),
        atomically: the new length."""
        length: int = self._run(plans.append(self._scope, key, value, max_len, ttl))
        return length

    def clear(self) -> bool:
        """Remove every key of this namespace (nested ones too) from Redis and L1."""
        return self._run(plans.clear(self._scope))

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the invalidation subscriber, and close the Redis client if this cache made it
        (from_url). A namespace view shares both with its cache and closes neither."""
        if self._keys.path:
            return
        self._parts.backgrounds.stop(timeout=1.0)  # a refresh under way may land (and give back its lease)
        self._shared.closed = True
        self._stop_metrics()
        parts = self._parts
        if parts.subscriber is not None:
            parts.subscriber.stop()
        self._shared.close()
        if parts.owned_client is not None:
            clients.close(parts.owned_client)

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _not_awaitable(cache: TieredCache, result: Any) -> Any:
    """A user function's result, unless it is an awaitable (a sync cache cannot wait on it)."""
    if hasattr(result, "__await__"):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(
            f"cache {cache.name!r}: a loader or writer returned an awaitable; use AsyncTieredCache for async functions"
        )
    return result


# redis_options that make redis.Redis's per-command path do real work (retries, client-side
# caching): a client made with any of them never takes lean_call.
LEAN_UNSAFE: frozenset[str] = frozenset({"retry", "retry_on_error", "retry_on_timeout", "cache", "cache_config"})


def lean_call(pool: Any, words: tuple[Any, ...]) -> Any:
    """One command's raw reply, straight off a pooled connection: what redis.Redis does for
    it, less its per-command bookkeeping (the retry wrapper, observability records, event
    dispatch), which costs about as much as the rest of an L2 read (~10 us a call). Only for
    a client from_url made without LEAN_UNSAFE options (so: no retries, no client-side cache,
    no single connection to lock, decode_responses off) and commands whose raw reply is the
    result (requests.raw_args). As redis.Redis does, a connection that failed mid-command is
    disconnected (an error reply is read whole: that connection is kept), and one the server
    asked to move (maintenance notifications) reconnects, before it goes back to the pool."""
    conn = pool.get_connection()
    try:
        conn.send_command(*words)
        return conn.read_response()  # an error reply raises ResponseError
    except redis_py.ResponseError:
        raise
    except BaseException:
        conn.disconnect()
        raise
    finally:
        try:
            if conn.should_reconnect():
                conn.disconnect()
                conn.connect()
        finally:
            pool.release(conn)


def mget_by_node(client: Any, parts: tuple[Any, ...]) -> list[Any]:
    """Single-slot MGETs on a cluster (core/sharding.py splits a get_many so), their replies
    in order, an error in place of each that failed: the MGETs of each master written down
    one of its pooled connections, all masters' before any is read, so the round trips
    overlap. redis-py's cluster pipeline does the same at ~12 us of Python a command, which
    made get_many(1,000) over ~1,000 slots cost 12x one Redis's. A part whose slot moved or is
    moving (MOVED, ASK, TRYAGAIN) is read again key by key through the cluster client, which
    follows each key to where it is."""
    replies: list[Any] = [None] * len(parts)
    by_node: dict[str, tuple[Any, list[int]]] = {}
    for index, part in enumerate(parts):
        try:
            node = client.nodes_manager.get_node_from_slot(key_slot(part.keys[0]))
        except Exception as exc:  # no master serves the slot now
            replies[index] = exc
            continue
        by_node.setdefault(node.name, (node, []))[1].append(index)
    sent: list[tuple[Any, Any, list[int]]] = []
    read: set[int] = set()  # the connections whose every reply was read (or that were dropped)
    try:
        for node, indexes in by_node.values():
            pool = client.get_redis_connection(node).connection_pool
            conn = pool.get_connection()
            sent.append((pool, conn, indexes))
            try:
                conn.send_packed_command(conn.pack_commands([(b"MGET", *parts[i].keys) for i in indexes]))
            except Exception as exc:
                conn.disconnect()
                read.add(id(conn))
                for index in indexes:
                    replies[index] = exc
                indexes.clear()
        for _, conn, indexes in sent:
            for at, index in enumerate(indexes):
                try:
                    replies[index] = conn.read_response()
                except redis_py.ResponseError as exc:  # an error reply: the connection reads on
                    replies[index] = exc
                except Exception as exc:  # the connection failed: the rest of its replies too
                    conn.disconnect()
                    for rest in indexes[at:]:
                        replies[rest] = exc
                    break
            read.add(id(conn))
    finally:
        for pool, conn, _ in sent:
            if id(conn) not in read:  # interrupted with replies unread: never hand it on
                conn.disconnect()
            pool.release(conn)
    for index, reply in enumerate(replies):
        if isinstance(reply, clients.REDIRECTED):  # key by key: a moving slot's keys are in two places
            try:
                replies[index] = [rq.issue(client, rq.Get(key)) for key in parts[index].keys]
            except Exception as exc:
                replies[index] = exc
    return replies


class CachedFunction(Decorated, Generic[_P, _R]):
    """A function decorated with TieredCache.cached."""

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = self._bound(args)
        if not self._uses_cache(bound, kwargs):
            return self._func(*bound, **kwargs)  # type: ignore[no-any-return]
        value: _R = self._cache._run(self._plan(bound, kwargs))
        return value

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Delete the cached result of a call with these arguments, everywhere."""
        deleted: bool = self._cache.delete(self.cache_key(*args, **kwargs))
        return deleted


class _Batch:
    """The keys of concurrent reads that go in one round trip, and its outcome."""

    __slots__ = ("done", "error", "keys", "place", "replies", "slots", "turn")

    def __init__(self) -> None:
        self.place: int | None = None  # its place in flight, once given (under ReadTrips._lock)
        self.keys: list[bytes] = []
        self.slots: dict[bytes, int] = {}  # readers of one key share its place
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.turn = threading.Event()  # set when the batch may go, or has failed unsent
        self.done = threading.Event()  # set when it has its replies, or its error

    def join(self, rkey: bytes) -> int:
        slot = self.slots.get(rkey)
        if slot is None:
            slot = self.slots[rkey] = len(self.keys)
            self.keys.append(rkey)
        return slot

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()
        self.turn.set()

    def reply(self, slot: int) -> Any:
        error = self.error
        if error is None:
            return self.replies[slot]
        if isinstance(error, Exception):
            raise own_copy(error)
        # The sending thread was interrupted mid-call (KeyboardInterrupt, SystemExit): that
        # is its own; to the others it is a call that got no answer.
        raise CacheUnavailable("the round trip of this batch of reads was interrupted") from error


class ReadTrips:
    """Concurrent L2 reads of one TieredCache from many threads, in shared round trips (what
    aio.RoundTrips does for tasks; writes are not batched here).

    A read while fewer than MAX_IN_FLIGHT reads of this cache are in flight goes at once,
    alone: a lone reader never waits for anyone. A read that arrives while they are joins
    the next batch instead, which goes as one MGET (at most MAX_KEYS keys; readers of one
    key share it) as soon as a round trip in flight has answered, sent by the thread that
    opened the batch while the others wait for its replies. Under load every round trip
    therefore carries everyone who arrived during the ones before (group commit): with the
    GIL, a thread's GET costs ~60 us of CPU, and 64 threads read no faster than one, while
    an MGET costs a few us a key. Two in flight rather than one, so that one slow reply (a
    large value) does not hold every other reader back; with four, eight threads gained
    nothing (benchmarks/threads.py).

    A batch is one call to the breaker and the histogram (RedisCall), as in aio.RoundTrips;
    a failure fails every reader of the batch, each with its own copy. A round trip that
    found Redis unavailable also fails the batches waiting behind it at once (they would
    wait for it and then time out in turn: a get must not take two timeouts). MGET answers
    nil for a key holding another type where GET raises WRONGTYPE: such a key reads as a
    miss.

    An exception from a signal handler (KeyboardInterrupt) can land between any two
    bytecodes. Each place in flight is taken and marked as this thread's in one step and
    given back in a finally; a batch's sender interrupted before it sends fails the batch
    (a miss for its readers) and passes its turn on; Events are set outside the lock; a
    batch handed a place goes even if the Event saying so was never set (TURN_POLL). What
    no Python code can rule out is bounded instead: no wait is longer than `bound` (longer
    than any round trip can take: the socket timeout and the pool's wait, twice), after
    which a sender goes anyway and a reader reads alone, and a place held that long is
    taken back. A forked child starts with new ReadTrips."""

    MAX_KEYS = 512
    MAX_IN_FLIGHT = 2
    TURN_POLL = 0.05

    def __init__(self, bound: float = 5.0) -> None:
        self.bound = bound
        self._lock = threading.Lock()
        self._places: dict[int, float] = {}  # a round trip in flight: its number -> when it began
        self._numbers = itertools.count()
        self._queue: deque[_Batch] = deque()  # batches waiting for a place, in order

    def get(self, send: Callable[[list[bytes]], list[Any]], rkey: bytes) -> Any:
        """GET rkey's reply; send(keys) makes one round trip for keys and returns their replies."""
        place: int | None = None
        opening = False
        batch: _Batch | None = None
        failure: BaseException | None = None
        try:
            with self._lock:
                places = self._places
                if len(places) >= self.MAX_IN_FLIGHT:
                    self._reap()
                if len(places) < self.MAX_IN_FLIGHT:
                    place = next(self._numbers)
                    places[place] = time.monotonic()  # held by this thread from here
                else:
                    queue = self._queue
                    opening = not queue or len(queue[-1].keys) >= self.MAX_KEYS
                    if opening:
                        queue.append(_Batch())
                    batch = queue[-1]
                    slot = batch.join(rkey)
            if batch is None:  # alone
                return send([rkey])[0]
            if not opening:
                if batch.done.wait(2 * self.bound):
                    return batch.reply(slot)
                return send([rkey])[0]  # its sender is gone: read alone
            place = self._wait_turn(batch)
            if place is None:  # failed while waiting, behind a round trip that found Redis down
                return batch.reply(slot)
            try:
                batch.replies = send(batch.keys)
            except BaseException as exc:
                batch.error = failure = exc
                raise
            finally:
                batch.done.set()
            return batch.replies[slot]
        except BaseException as exc:
            failure = failure or exc
            raise
        finally:
            if place is not None:
                self._next(place, failure)

    def _wait_turn(self, batch: _Batch) -> int | None:
        """Wait until batch may go: its place in flight then (None: it failed meanwhile).

        The turn is an Event set after the place is given, under the lock; between the two
        an interrupt of the thread handing it over would leave it unset, so the place is
        looked at every TURN_POLL seconds too."""
        deadline = time.monotonic() + self.bound
        try:
            while not batch.turn.wait(self.TURN_POLL):
                if batch.place is not None or time.monotonic() >= deadline:
                    break
        except BaseException:
            self._abandon(batch)
            raise
        with self._lock:
            if batch.place is None and batch in self._queue:  # no turn within bound: go anyway
                self._queue.remove(batch)
                batch.place = self._take()
            return batch.place

    def _next(self, place: int | None, failure: BaseException | None) -> None:
        """A round trip has answered (or failed): give its place to the oldest batch waiting.
        If Redis was unavailable, the batches waiting fail at once, each reader its own copy."""
        handed: _Batch | None = None
        failed: list[_Batch] = []
        with self._lock:
            self._places.pop(place, None)  # type: ignore[arg-type]  # (gone if reaped)
            if failure is not None and isinstance(failure, CacheUnavailable):
                failed = list(self._queue)
                self._queue.clear()
            elif self._queue:
                handed = self._queue.popleft()
                handed.place = self._take()
        if handed is not None:
            handed.turn.set()
        for batch in failed:
            batch.fail(failure)  # type: ignore[arg-type]  # a CacheUnavailable here

    def _abandon(self, batch: _Batch) -> None:
        """The thread that was to send batch was interrupted: fail it, pass any place on."""
        with self._lock:
            if batch in self._queue:  # nobody else will send it
                self._queue.remove(batch)
            place, batch.place = batch.place, None
        batch.fail(CacheUnavailable("the thread that was to send this batch of reads was interrupted"))
        if place is not None:  # its turn came meanwhile: pass it on
            self._next(place, None)

    def _take(self) -> int:
        """A new place in flight (under the lock)."""
        place = next(self._numbers)
        self._places[place] = time.monotonic()
        return place

    def _reap(self) -> None:
        """Take back places held past bound: no round trip lasts that long, so their thread
        was interrupted between taking the place and giving it back."""
        deadline = time.monotonic() - self.bound
        for place, since in list(self._places.items()):
            if since < deadline:
                del self._places[place]


class MemoryTieredCache(TieredCache):
    """A TieredCache with a MemoryStore in Redis's place (tiercache/memory.py): made by
    TieredCache.in_memory and by from_config for backend "memory" or enabled false."""

    def __init__(self, *, name: str, enabled: bool = True, **options: Unpack[CacheOptions]) -> None:
        shared, self._store = memory.start(name, enabled, dict(options))
        self._start(None, shared)

    @staticmethod
    def _new_parts() -> SyncParts:
        return MemoryParts()

    def _carry_out(self, request: rq.Request) -> Any:
        if isinstance(request, (rq.Call, rq.Flight, rq.Pause, rq.Background)):
            return super()._carry_out(request)
        return memory.carry_out(self, request)


class SyncParts(Parts):
    """TieredCache's single-flight, subscriber thread and owned client (see base.Parts)."""

    flights: SingleFlight
    backgrounds: Backgrounds
    reads: ReadTrips
    subscriber: Subscriber | None = None
    lean: bool = False  # commands may skip redis.Redis's bookkeeping (lean_call)

    def start(self, cache: Any) -> None:
        self.flights = SingleFlight(cache._shared.lease_ms / 1000.0)
        self.backgrounds = Backgrounds()
        self.reads = ReadTrips(read_bound(cache._redis))
        self.subscriber = None
        if cache._shared.publisher is not None:
            self.subscriber = Subscriber(cache, self)
            self.subscriber.start()

    def after_fork(self, cache: Any) -> None:
        clients.after_fork(cache._redis)  # redis-py's own fork check would do it too
        self.backgrounds = Backgrounds()  # the parent's refresh threads do not run here (its lock may be held)

    def abandon(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stopping.set()  # it closes its connections within POLL seconds
        if self.owned_client is not None:
            _close_quietly(self.owned_client)


class MemoryParts(SyncParts):
    """A memory cache's parts: single-flight alone (no client, no subscriber)."""

    def start(self, cache: Any) -> None:
        self.flights = SingleFlight(cache._shared.lease_ms / 1000.0)
        self.backgrounds = Backgrounds()

    def after_fork(self, cache: Any) -> None:
        self.backgrounds = Backgrounds()  # the child has its own copy of the store


class Subscriber(threading.Thread):
    """The invalidation subscriber of a TieredCache: a daemon thread running
    core.invalidation.subscribe on connections of its own."""

    def __init__(self, cache: TieredCache, parts: SyncParts) -> None:
        super().__init__(name=f"tiercache-subscriber-{cache.name}", daemon=True)
        self._parts = parts
        self._shared = cache._shared
        self._client = cache._redis
        self.state = cache._shared.subscriber_state()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self._pubsub: Any = None
        self._tracker: Any = None  # the connection that holds CLIENT TRACKING on
        self._node_client: Any = None  # on a cluster: the client of the node subscribed to
        self._attempts = 0
        self._sentinel = clients.is_sentinel(cache._redis)

    def run(self) -> None:
        plan = invalidation.subscribe(self._shared, self.state)
        try:
            request = next(plan)
            while not self.stopping.is_set():
                try:
                    result = self._carry_out(request)
                except Exception as exc:
                    if self.stopping.is_set():
                        break
                    request = plan.throw(exc)
                else:
                    request = plan.send(result)
        finally:
            plan.close()
            self._disconnect()
            self.state.lost("disconnect")  # no subscriber, no L1 (invariant 3)

    def _carry_out(self, request: rq.SubscriberRequest) -> Any:
        try:
            match request:
                case rq.Receive(timeout):
                    return self._receive(timeout)
                case rq.Do.PING:
                    return self._pubsub.ping()
                case rq.Ready(serving):
                    return self.ready.set() if serving else self.ready.clear()
                case rq.Subscribe(channels):
                    self._disconnect()
                    self._pubsub = self._open_pubsub(channels[0])
                    if self._shared.sharded:
                        return self._pubsub.ssubscribe(*channels)
                    subscribed = self._pubsub.subscribe(*channels)
                    if self._sentinel:
                        self._shared.master_seen(clients.master_address(self._pubsub.connection))
                    return subscribed
                case rq.Sleep(seconds):
                    return self.stopping.wait(seconds)
                case rq.Do.DISCONNECT:
                    return self._disconnect()
                # the CLIENT TRACKING handshake (invalidation="tracking")
                case rq.WatchPushes(pushed):
                    # RESP2 parsers have no pushes: invalidations come as messages then.
                    watch = getattr(self._pubsub.connection._parser, "set_invalidation_push_handler", None)
                    if watch is not None:
                        watch(pushed.append)
                    sock: socket.socket | None = getattr(self._pubsub.connection, "_sock", None)
                    return sock.getsockname() if sock else None
                case rq.Do.OPEN_TRACKER:
                    self._close_tracker()
                    tracker_pool = pool_like(self._client)
                    self._tracker = redis_py.Redis(connection_pool=tracker_pool, single_connection_client=True)
                    return None
                case rq.Do.CLIENT_LIST:
                    return self._tracker.client_list(_type="pubsub")
                case rq.TrackingOn(client_id, prefix):
                    return self._tracker.client_tracking_on(clientid=client_id, bcast=True, prefix=[prefix])
                case rq.Do.TRACKING_INFO:
                    return self._tracker.execute_command("CLIENT", "TRACKINGINFO")
                case rq.Do.CLOSE_TRACKER:
                    return self._close_tracker()
        except redis_py.ResponseError as exc:
            raise RedisReplyError(str(exc)) from exc

    def _open_pubsub(self, channel: bytes) -> Any:
        """A new pub/sub of the client; on a cluster, on a client of its own to the node
        that serves channel's slot (sharded pub/sub), closed with it."""
        self._attempts += 1
        if self._parts.embedded is not None and self._attempts > 1:
            embedded.ensure(self._parts.embedded)  # the server died: this cache starts it again
        if not self._shared.sharded:
            return self._client.pubsub()
        if self._attempts > 1:  # a node failed, or the slot moved: ask the cluster again
            self._client.nodes_manager.initialize()
        node = self._client.get_node_from_key(channel)
        settings = clients.node_settings(self._client, redis_py.Redis)
        # No retries: a node that died must reach the subscriber's plan at once (L1 shuts).
        self._node_client = redis_py.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **settings)
        return self._node_client.pubsub()

    def _receive(self, timeout: float) -> Any:
        """The next message, or None after timeout seconds. Echoes of this cache's own
        messages are consumed without the GIL (drop_echoes) while redis-py holds no buffered
        bytes and the socket is a plain one (not TLS), and reported as invalidation.ECHO;
        while only echoes come, the socket is looked at once per ECHO_LINGER."""
        pubsub = self._pubsub
        connection = pubsub.connection
        sock = getattr(connection, "_sock", None)
        if type(sock) is socket.socket and at_frame_start(connection):
            seen = drop_echoes(sock, self.state.echo_marker, timeout, invalidation.ECHO_LINGER)
            if seen == ECHO_NOTHING:
                return None
            if seen == ECHO_ONLY:
                return invalidation.ECHO
            if seen == ECHO_LOST:
                raise redis_py.ConnectionError("the subscriber lost its place in the stream")
            # Something else is there: redis-py reads it, and the rest of a message whose
            # first bytes came alone gets the timeout too (with 0 it would be a failure).
        return pubsub.get_message(timeout=timeout)

    def _close_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            _close_quietly(tracker)

    def _disconnect(self) -> None:
        self._close_tracker()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail too; it is gone either way
                pass
        node_client, self._node_client = self._node_client, None
        if node_client is not None:
            _close_quietly(node_client)

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self.join(timeout)


def read_bound(client: Any) -> float:
    """Longer than any read can take on client: its socket timeout and its pool's wait for
    a free connection, each counted twice, and a second to spare (ReadTrips.bound)."""
    socket_timeout = clients.connection_kwargs(client).get("socket_timeout") or 5.0
    wait = getattr(getattr(client, "connection_pool", None), "timeout", None) or 0.0
    return 2.0 * (float(socket_timeout) + float(wait)) + 1.0


def at_frame_start(connection: Any) -> bool:
    """Whether redis-py's parser of connection holds no buffered bytes, so the socket's next
    byte begins a frame (drop_echoes' precondition); False when that cannot be told."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is not None:  # the hiredis parser
        return not reader.has_data()
    unread = getattr(getattr(parser, "_buffer", None), "unread_bytes", None)  # redis-py's own
    return unread is not None and unread() == 0


def _close_quietly(client: Any) -> None:
    """Close a client and the pool made for it; a broken connection may fail to close,
    and is gone either way."""
    try:
        clients.close(client)
        if not clients.is_cluster(client):
            client.connection_pool.disconnect()
    except Exception:
        pass
