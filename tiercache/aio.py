"""AsyncTieredCache: the asyncio driver. Every operation is a plan in core/plans.py, and
the invalidation subscriber a plan in core/invalidation.py; this file only says how their
requests are awaited with redis.asyncio."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import redis.asyncio as redis_aio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import MaxConnectionsError, ResponseError, WatchError

from . import clients, embedded, memory
from ._validate import Seconds
from .base import CacheBase, D, K, Key, M, Parts, V, _inherited, pool_like
from .codec import key_slot
from .core import invalidation, plans, sharding
from .core import requests as rq
from .core.cached import CallKeys, Decorated, check_decorated
from .core.resilience import RedisCall, client_options, own_copy, reply_error
from .core.shared import CacheOptions
from .errors import CacheError, CacheUnavailable, RedisReplyError
from .loading import AsyncBackgrounds, AsyncSingleFlight
from .local import MISSING

if TYPE_CHECKING:
    from typing_extensions import Unpack

_T = TypeVar("_T")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class AsyncQueuedPool(redis_aio.BlockingConnectionPool):
    """The pool of a client from_url makes: tasks past max_connections wait up to `timeout`
    seconds for a free connection, then get MaxConnectionsError (busy, not Redis down; see
    cache.QueuedPool)."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped in redis-py
        except redis_aio.ConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):  # the wait for a free connection ran out
                raise MaxConnectionsError(f"no free connection within {self.timeout} s") from exc
            raise


class AsyncTieredCache(CacheBase):
    """TieredCache for asyncio: the same methods, awaitable, on the same compiled L1."""

    _parts: AsyncParts

    @staticmethod
    def _new_parts() -> AsyncParts:
        return AsyncParts()

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Start the invalidation subscriber if needed and wait until its subscription is
        confirmed and L1 serves; True if so. (Any operation starts it too.)"""
        self._bind_loop()
        subscriber = self._parts.subscriber
        if subscriber is None:
            return True
        subscriber.ensure_started()
        waiting = asyncio.ensure_future(subscriber.ready.wait())
        try:  # not wait_for: before Python 3.12 it can swallow our caller's cancellation
            done, _ = await asyncio.wait({waiting}, timeout=timeout)
        finally:
            waiting.cancel()
        return bool(done) and self.l1_enabled

    @classmethod
    def from_url(
        cls, url: str, *, name: str, redis_options: dict[str, Any] | None = None, **options: Unpack[CacheOptions]
    ) -> AsyncTieredCache:
        """A cache on a new redis.asyncio client for url (see TieredCache.from_url): one
        Redis, Redis Cluster (redis+cluster://) or a Sentinel service (redis+sentinel://)."""
        kind = clients.kind_of_url(url)
        directory = None
        if kind == "embedded":  # started here if need be: blocking, as a from_url can
            directory = embedded.directory_of(url)
            url, kind = clients.embedded_url(url), "redis"
        if kind == "cluster":
            client = clients.cluster_client(url, client_options(redis_options or {}, Retry(NoBackoff(), 0)), True)
        elif kind == "sentinel":
            client = clients.sentinel_client(url, client_options(redis_options or {}, Retry(NoBackoff(), 0)), True)
        else:
            pool = AsyncQueuedPool.from_url(url, **client_options(redis_options or {}, Retry(NoBackoff(), 0)))
            client = redis_aio.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True
        cache = cls(client, name=name, **options)  # nothing connects before the first call: nothing to close
        cache._parts.owned_client = client
        cache._parts.embedded = directory
        return cache

    @staticmethod
    def in_memory(*, name: str, enabled: bool = True, **options: Unpack[CacheOptions]) -> AsyncTieredCache:
        """TieredCache.in_memory for asyncio."""
        return AsyncMemoryTieredCache(name=name, enabled=enabled, **options)

    # -- the driver ---------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        """Check the cache is open and used in its event loop (the first one it ran in):
        redis.asyncio's connections and the subscriber's task live in that loop."""
        sh = self._shared
        if sh.closed or sh.forked:
            self._restart()
        loop = asyncio.get_running_loop()
        if sh.loop is None:
            sh.loop = loop
        elif sh.loop is not loop:
            raise CacheError(
                f"cache {sh.name!r} belongs to the event loop it was first used in, not this one "
                "(each asyncio.run() makes a new loop): make an AsyncTieredCache per event loop"
            )

    async def _run(self, plan: rq.Plan[_T], repairing: bool = False) -> _T:
        sh = self._shared
        if sh.loop is not asyncio.get_running_loop() or sh.closed or sh.forked:
            self._bind_loop()
        subscriber = self._parts.subscriber
        if subscriber is not None and subscriber.task is None:
            subscriber.ensure_started()
        if self._shared.repairs.pending and not repairing:  # writes to mend first (repair.py)
            await self._run(plans.repair(self._scope), repairing=True)
        step = rq.Stepper(plan)
        while not step.done:
            try:
                reply = await self._carry_out(step.request)
            except BaseException as exc:
                step.throw(exc)
            else:
                step.send(reply)
        return step.result

    async def _carry_out(self, request: rq.Request) -> Any:
        if isinstance(request, rq.Call):
            result = request.func(*request.args)
            return await result if inspect.isawaitable(result) else result
        if isinstance(request, rq.Flight):
            plan = request.plan
            return await self._parts.flights.run(request.key, lambda: self._run(plan))
        if isinstance(request, rq.Pause):
            return await asyncio.sleep(request.seconds)
        if isinstance(request, rq.Background):
            background = request.plan
            return self._parts.backgrounds.start(request.key, lambda: self._run(background))
        if isinstance(request, rq.Update):
            if self._shared.sharded:
                return await self._on_cluster(self._carry_out_update, request)
            return await self._carry_out_update(request)
        if self._shared.sharded:
            return await self._on_cluster(self._carry_out_sharded, request)
        # With the other tasks' requests of this loop iteration, in shared round trips:
        if type(request) is rq.Get:
            return await self._parts.trips.get(self._shared, self._redis, request.key)
        if type(request) in WRITES or (type(request) is rq.Pipeline and not request.transaction):
            trips = self._parts.trips
            return await _outcome_first(trips, trips.write(self._shared, self._redis, request))
        return await _issue_one(self._shared, self._redis, request)

    async def _on_cluster(self, carry_out: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
        """TieredCache._on_cluster, awaited."""
        try:
            return await carry_out(request)
        finally:
            if self._shared.topology_due(time.monotonic()):
                await clients.aask_map(self._shared, self._redis)

    async def _carry_out_sharded(self, request: rq.Command | rq.Pipeline) -> Any:
        """TieredCache._carry_out_sharded, awaited (one round trip of its own per step: the
        batching of RoundTrips is for one Redis). The steps run in a task of their own,
        shielded from a caller that is cancelled: a write's invalidation goes in a step of
        its own after the write, and must go whatever became of the caller."""
        steps = asyncio.ensure_future(self._sharded_steps(request))
        try:
            return await asyncio.shield(steps)
        except asyncio.CancelledError:
            _riding.add(steps)  # held until done; what it raises is retrieved there
            steps.add_done_callback(_settled)
            raise

    async def _sharded_steps(self, request: rq.Command | rq.Pipeline) -> Any:
        if isinstance(request, rq.Scan):
            return await self._scan_masters(request)
        breaker = self._shared.breaker_for(clients.master_of(self._redis, request))
        with RedisCall(self._shared, request.op, breaker):
            master_of = functools.partial(clients.master_of_slot, self._redis)
            step = rq.Stepper(sharding.carry(self._shared, request, master_of))
            while not step.done:
                try:
                    reply = await self._issue_sharded(step.request)
                except BaseException as exc:  # a cancellation too: the plan still announces the write
                    step.throw(exc)
                else:
                    step.send(reply)
            return step.result

    async def _issue_sharded(self, request: rq.Command | rq.Pipeline) -> Any:
        if isinstance(request, rq.Publish):
            return await clients.spublish(self._redis, request)
        if not isinstance(request, rq.Pipeline):
            return await rq.issue(self._redis, request)
        async with self._redis.pipeline(transaction=request.transaction) as pipe:
            for command in request.commands:
                rq.issue(pipe, command)
            replies = await pipe.execute(raise_on_error=False)
        if not request.transaction:  # a part whose slot moved or is moving: again, alone
            for index, reply in enumerate(replies):
                if isinstance(reply, clients.REDIRECTED):
                    command = request.commands[index]
                    try:
                        if isinstance(command, rq.MGet):  # key by key: a moving slot's keys are in two places
                            replies[index] = [await rq.issue(self._redis, rq.Get(key)) for key in command.keys]
                        else:
                            replies[index] = await rq.issue(self._redis, command)
                    except Exception as exc:
                        replies[index] = exc
        return replies

    async def _scan_masters(self, scan: rq.Scan) -> tuple[int, list[bytes]]:
        await self._redis.initialize()  # learns the nodes on its first call (then returns at once)
        masters = clients.masters(self._redis)
        master, cursor = clients.scan_cursor(scan.cursor)
        if master >= len(masters):  # a master left the cluster meanwhile
            return 0, []
        with RedisCall(self._shared, scan.op, self._shared.breaker_for(masters[master].name)):
            args = ("SCAN", cursor, "MATCH", scan.match, "COUNT", scan.count)
            cursor, found = await masters[master].execute_command(*args)
        return clients.next_cursor(master, len(masters), int(cursor)), found

    async def _carry_out_update(self, update: rq.Update) -> Any:
        """TieredCache._carry_out_update, awaited. The riders of an update that wrote
        nothing go from a task of their own (a cancellation may land anywhere in it)."""
        written: list[bool] = []
        try:
            with RedisCall(self._shared, update.op, self._update_breaker(update)):
                return await self._update(update, written)
        finally:
            if not written and update.riders:
                sending = asyncio.ensure_future(self._ride_alone(update.riders))
                _riding.add(sending)
                sending.add_done_callback(_riding.discard)

    def _update_breaker(self, update: rq.Update) -> Any:
        """The breaker of the master of update's key (the cache's own on one Redis)."""
        if not self._shared.sharded:
            return self._shared.breaker
        return self._shared.breaker_for(clients.master_of_slot(self._redis, key_slot(update.key)))

    async def _update(self, update: rq.Update, written: list[bool]) -> Any:
        """TieredCache._update, awaited."""
        inside, after = sharding.split_riders(update.riders) if self._shared.sharded else (update.riders, ())
        async with self._redis.pipeline(transaction=True) as pipe:
            for attempt in range(rq.UPDATE_ATTEMPTS):
                await pipe.watch(update.key)
                outcome = update.change(await pipe.get(update.key))
                if outcome[0] is rq.NO_CHANGE:
                    await pipe.reset()
                    return outcome[1]
                data, px, result = outcome
                rq.stage_update(pipe, update.key, data, px, inside)
                try:
                    await pipe.execute()
                except WatchError:
                    await asyncio.sleep(rq.update_pause(attempt))
                    continue
                written.append(True)
                if after:  # on a cluster, the PUBLISH once the MULTI is done, whatever becomes of the caller
                    sending = asyncio.ensure_future(self._ride_alone(after))
                    _riding.add(sending)
                    sending.add_done_callback(_riding.discard)
                    await asyncio.shield(sending)
                return result
        raise ResponseError(rq.CONTENDED.format(op=update.op, attempts=rq.UPDATE_ATTEMPTS))

    async def _ride_alone(self, riders: tuple[rq.Command, ...]) -> None:
        try:
            if self._shared.sharded:
                for rider in riders:  # no PUBLISH in a cluster's pipeline
                    await self._issue_sharded(rider)
                return
            async with self._redis.pipeline(transaction=False) as pipe:
                for rider in riders:
                    rq.issue(pipe, rider)
                await pipe.execute()
        except Exception:  # Redis cannot take them: the subscribers are cut off from it too
            pass

    # -- reads ----------------------------------------------------------------------------------

    # Keys are typed narrower than TieredFront.get's, which takes anything at run time and
    # leaves a wrong key to the slow path's TypeError.
    @overload  # type: ignore[override]
    async def get(self, key: Key) -> Any: ...
    @overload
    async def get(self, key: Key, default: D) -> Any | D: ...
    @overload
    async def get(self, key: Key, default: D, model: type[M]) -> M | D: ...
    @overload
    async def get(self, key: Key, *, model: type[M]) -> M | None: ...
    async def get(self, key: Key, default: Any = None, model: Any = None) -> Any:
        """The value for key from L1, else Redis, else the loader; default on a miss."""
        if model is None:
            value = self._l1_get(key)  # compiled: an L1 hit costs one C call
            if value is not MISSING:
                return value
        return await self._get_slow(key, default, model)

    async def _get_slow(self, key: Any, default: Any, model: Any) -> Any:
        if self._shared.loader is not None:
            return await self._run(plans.get_with_loader(self._scope, key, default, model))
        value = await self._run(plans.get(self._scope, key, model))
        return default if value is MISSING else value

    @overload
    async def get_or_load(
        self,
        key: K,
        loader: Callable[[K], Awaitable[V]],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        early_refresh: bool | float | None = None,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> V: ...
    @overload
    async def get_or_load(
        self,
        key: K,
        loader: Callable[[K], V],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        early_refresh: bool | float | None = None,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> V: ...
    async def get_or_load(
        self,
        key: Key,
        loader: Callable[[Any], Any],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
        early_refresh: bool | float | None = None,
        stale_while_revalidate: Seconds | None = None,
        stale_if_error: Seconds | None = None,
    ) -> Any:
        """L1, then Redis, then loader(key) (a coroutine function or a plain one); one load
        per key in this process at a time, shared by every task that asks meanwhile. The rest
        as TieredCache.get_or_load."""
        fresh = self._shared.call_freshness(early_refresh, stale_while_revalidate, stale_if_error)
        return await self._run(plans.get_or_load(self._scope, key, loader, ttl, tags=tags, fresh=fresh))

    async def get_many(self, keys: Iterable[Key]) -> dict[Key, Any]:
        """A dict of the keys found in L1 or Redis (one MGET for all L1 misses)."""
        return await self._run(plans.get_many(self._scope, keys))

    def keys(self, match: str = "*", count: int = 1000) -> AsyncIterator[Key]:
        """TieredCache.keys as an async iterator: ``async for key in cache.keys("user:*")``."""
        plans.check_scan(match, count)

        async def scan() -> AsyncIterator[Key]:
            cursor = 0
            while True:
                cursor, found = await self._run(plans.scan_keys(self._scope, cursor, match, count))
                for key in found:
                    yield key
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
    ) -> Callable[[Callable[_P, Awaitable[_R]]], AsyncCachedFunction[_P, _R]]:
        """TieredCache.cached for coroutine functions (and async methods); the wrapper's
        invalidate is a coroutine too. condition and unless are plain functions."""
        fresh = self._shared.call_freshness(early_refresh, stale_while_revalidate, stale_if_error)

        def decorate(func: Callable[_P, Awaitable[_R]]) -> AsyncCachedFunction[_P, _R]:
            check_decorated(func, True, name is not None, key is not None)
            keys = CallKeys(func, key, name, tags)
            return AsyncCachedFunction(self, func, keys, ttl, condition, unless, cache_none, fresh)

        return decorate

    async def exists(self, key: Key) -> bool:
        """True if key is in L1 or Redis (False if Redis cannot be asked)."""
        return await self._run(plans.exists(self._scope, key))

    async def ttl(self, key: Key) -> float | None:
        """Seconds key has left in Redis; math.inf if it never expires; None if absent."""
        return await self._run(plans.ttl(self._scope, key))

    # -- writes -----------------------------------------------------------------------------

    async def set(self, key: Key, value: Any, ttl: Seconds | None = None, tags: Iterable[str] | None = None) -> bool:
        """writer(key, value), then Redis, then L1; False if Redis could not be written."""
        return await self._run(plans.set(self._scope, key, value, ttl, tags))

    async def set_many(
        self,
        mapping: Mapping[Key, Any] | Iterable[tuple[Key, Any]],
        ttl: Seconds | None = None,
        tags: Iterable[str] | None = None,
    ) -> bool:
        """set for every pair, in one round trip; nothing is written if any value cannot be."""
        return await self._run(plans.set_many(self._scope, mapping, ttl, tags))

    async def delete(self, key: Key) -> bool:
        """writer(key, DELETED), then Redis and L1. True if Redis held the key."""
        return bool(await self._run(plans.delete(self._scope, [key], "delete")))

    async def delete_many(self, keys: Iterable[Key]) -> int:
        """delete for every key, in one round trip: how many Redis held (0 if unreachable)."""
        return await self._run(plans.delete(self._scope, list(keys), "delete_many")) or 0

    async def expire(self, key: Key, ttl: Seconds | None) -> bool:
        """Give key a new ttl from now (None: the default; inf: never); False if absent."""
        return await self._run(plans.expire(self._scope, key, ttl))

    async def incr(self, key: Key, amount: int = 1, ttl: Seconds | None = None) -> int:
        """Add amount to the integer under key in Redis; the new value (see TieredCache.incr)."""
        return await self._run(plans.incr(self._scope, key, amount, ttl))

    async def delete_match(self, match: str) -> int:
        """TieredCache.delete_match."""
        return await self._run(plans.delete_match(self._scope, match))

    async def delete_prefix(self, prefix: str) -> int:
        """TieredCache.delete_prefix."""
        return await self._run(plans.delete_prefix(self._scope, prefix))

    async def invalidate_tags(self, tags: Iterable[str]) -> int:
        """TieredCache.invalidate_tags."""
        return await self._run(plans.invalidate_tags(self._scope, tags))

    async def get_field(self, key: Key, field: Any, default: Any = None) -> Any:
        """TieredCache.get_field."""
        return await self._run(plans.get_field(self._scope, key, field, default))

    async def set_field(self, key: Key, field: Any, value: Any, ttl: Seconds | None = None) -> bool:
        """TieredCache.set_field."""
        return bool(await self._run(plans.set_field(self._scope, key, field, value, ttl)))

    async def incr_field(self, key: Key, field: Any, amount: int | float = 1) -> int | float:
        """TieredCache.incr_field."""
        value: int | float = await self._run(plans.incr_field(self._scope, key, field, amount))
        return value

    async def delete_field(self, key: Key, field: Any) -> bool:
        """TieredCache.delete_field."""
        return bool(await self._run(plans.delete_field(self._scope, key, field)))

    async def append(self, key: Key, value: Any, max_len: int | None = None, ttl: Seconds | None = None) -> int:
        """TieredCache.append."""
        length: int = await self._run(plans.append(self._scope, key, value, max_len, ttl))
        return length

    async def clear(self) -> bool:
        """Remove every key of this namespace (nested ones too) from Redis and L1."""
        return await self._run(plans.clear(self._scope))

    # -- lifetime -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the invalidation subscriber, and close the Redis client if this cache made it
        (from_url). A namespace view shares both with its cache and closes neither."""
        if self._keys.path:
            return
        self._shared.closed = True
        self._stop_metrics()
        parts = self._parts
        await parts.backgrounds.stop(timeout=1.0)
        if parts.subscriber is not None:
            await parts.subscriber.stop()
        self._shared.close()
        if parts.owned_client is not None:
            await _bounded(clients.aclose(parts.owned_client), timeout=5.0)

    async def __aenter__(self) -> AsyncTieredCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _outcome_first(trips: RoundTrips, future: asyncio.Future[Any]) -> Any:
    """A batched write's result. A caller cancelled before its request was put in a
    pipeline withdraws it (it is never sent, as a single write cancelled before the wire);
    one cancelled later gets the cancellation only once the batch has answered or failed:
    the request is on its way, and its plan must not end (and the fill guard let the key go)
    before it lands, or a newer write of the key could land first and be overwritten."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():  # the batch's own outcome, not our caller's cancellation
                raise
            if trips.withdraw(future):
                raise
            cancelled = True
            continue
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError() from None
            raise
        if cancelled:
            raise asyncio.CancelledError()
        return result


async def _issue_one(shared: Any, client: Any, request: rq.Command | rq.Pipeline) -> Any:
    """One request in a round trip of its own."""
    with RedisCall(shared, request.op):
        if not isinstance(request, rq.Pipeline):
            return await rq.issue(client, request)
        async with client.pipeline(transaction=request.transaction) as pipe:
            for command in request.commands:
                rq.issue(pipe, command)
            return await pipe.execute()


# Riders of updates that wrote nothing, sent by tasks of their own: held until done.
_riding: set[asyncio.Future[None]] = set()


class AsyncCachedFunction(Decorated, Generic[_P, _R]):
    """A coroutine function decorated with AsyncTieredCache.cached."""

    # Calling it returns a coroutine: say so to asyncio.iscoroutinefunction (and to
    # inspect's on Python 3.12+, below), which frameworks ask before awaiting.
    _tiercache_async = True
    _is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        mark = getattr(inspect, "markcoroutinefunction", None)
        if mark is not None:
            mark(self)

    async def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        bound = self._bound(args)
        if not self._uses_cache(bound, kwargs):
            return await self._func(*bound, **kwargs)  # type: ignore[no-any-return]
        value: _R = await self._cache._run(self._plan(bound, kwargs))
        return value

    async def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Delete the cached result of a call with these arguments, everywhere."""
        deleted: bool = await self._cache.delete(self.cache_key(*args, **kwargs))
        return deleted


# The single commands that share a pipeline with other tasks' (RoundTrips.write): writes,
# and scripts (one-key writes, leases, expire). Reads other than GET go on their own.
WRITES: frozenset[type] = frozenset({rq.Eval, rq.Set, rq.Delete, rq.IncrBy, rq.Unlink, rq.Publish})


class RoundTrips:
    """Concurrent Redis calls of one cache, in shared round trips.

    Every request a plan asks for in one iteration of the event loop joins a batch, sent
    when the loop has run every task that was ready (a callback scheduled with call_soon runs
    after them: no timer, so a lone call waits one loop iteration, not a delay):

    * GETs go as one MGET of at most MAX_KEYS keys (more make several, in flight together);
      several readers of one key share its slot; a lone key is a plain GET. One difference
      from single GETs: MGET answers nil for a key that holds another type (GET raises
      WRONGTYPE), so such a key reads as a miss rather than a counted decode failure.
    * Writes and scripts (WRITES, and pipelines that are not transactions) go as one
      pipeline of at most MAX_WRITES requests, in the order they were asked (more make
      several, one after another, so their invalidations keep their order); a lone one goes
      as it would alone. An error reply fails only the request whose command it answers; a
      lost connection fails every request of the pipeline, landed or not (each is then a
      write whose outcome is unknown: dropped from L1, repaired if a writer took it). A
      writer cancelled meanwhile sees its cancellation once its batch has answered
      (_outcome_first), as a single write cancelled on the wire would.

    A batch is one round trip to the breaker (one verdict) and to the latency histogram (one
    observation per op in it); a failure that is not an error reply (Redis down, the pool
    exhausted) fails every request of the batch, each with its own copy of the error. Every
    caller's plan goes on as after a call of its own (the fill guard, the counters); a caller
    cancelled meanwhile leaves the batch to the others; whatever ends a batch's task (even a
    cancel before its first step), no caller is left waiting.
    """

    MAX_KEYS = 512
    MAX_WRITES = 1024

    def __init__(self) -> None:
        self._reads: dict[bytes, list[asyncio.Future[Any]]] = {}
        self._writes: list[tuple[rq.Command | rq.Pipeline, asyncio.Future[Any]]] = []
        self._unsent: set[asyncio.Future[Any]] = set()  # writes not in a pipeline yet
        self._scheduled = False
        self._senders: set[asyncio.Task[None]] = set()  # held, so none is collected mid-flight

    def get(self, shared: Any, client: Any, rkey: bytes) -> asyncio.Future[Any]:
        """A future of GET rkey's reply, answered by the next batch."""
        future = self._schedule(shared, client)
        self._reads.setdefault(rkey, []).append(future)
        return future

    def write(self, shared: Any, client: Any, request: rq.Command | rq.Pipeline) -> asyncio.Future[Any]:
        """A future of request's result (a pipeline's: its list), answered by the next batch."""
        future = self._schedule(shared, client)
        self._writes.append((request, future))
        self._unsent.add(future)
        return future

    def withdraw(self, future: asyncio.Future[Any]) -> bool:
        """Take back a write not yet put in a pipeline (True), which is then never sent."""
        if future not in self._unsent:
            return False
        self._unsent.discard(future)
        future.cancel()
        return True

    def _claim(self, batch: list[tuple[rq.Command | rq.Pipeline, asyncio.Future[Any]]]) -> list[Any]:
        """The requests of batch not withdrawn, now past withdrawing."""
        claimed = [(request, future) for request, future in batch if future in self._unsent]
        self._unsent.difference_update(future for _, future in claimed)
        return claimed

    def _schedule(self, shared: Any, client: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush, shared, client)
        return loop.create_future()

    def _flush(self, shared: Any, client: Any) -> None:
        self._scheduled = False
        reads, self._reads = self._reads, {}
        writes, self._writes = self._writes, []
        keys = list(reads)
        for start in range(0, len(keys), self.MAX_KEYS):
            chunk = {key: reads[key] for key in keys[start : start + self.MAX_KEYS]}
            self._start(self._send_reads(shared, client, chunk), [f for fs in chunk.values() for f in fs])
        if writes:  # one pipeline after another, so the invalidations go out in their order
            chunks = [writes[start : start + self.MAX_WRITES] for start in range(0, len(writes), self.MAX_WRITES)]
            self._start(self._send_write_chunks(shared, client, chunks), [future for _, future in writes])

    def _start(self, send: Coroutine[Any, Any, None], futures: list[asyncio.Future[Any]]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(send)
        except Exception as exc:
            send.close()
            _fail(futures, exc)
            return
        self._senders.add(task)
        task.add_done_callback(functools.partial(self._sent, futures))

    def _sent(self, futures: list[asyncio.Future[Any]], task: asyncio.Task[None]) -> None:
        self._senders.discard(task)
        _fail(futures, CacheUnavailable("the batched call ended before Redis answered"))

    @staticmethod
    async def _send_reads(shared: Any, client: Any, chunk: dict[bytes, list[asyncio.Future[Any]]]) -> None:
        keys = list(chunk)
        try:
            with RedisCall(shared, "get"):
                replies = [await client.get(keys[0])] if len(keys) == 1 else await client.mget(keys)
        except Exception as exc:
            _fail([future for futures in chunk.values() for future in futures], exc)
            return
        for reply, futures in zip(replies, chunk.values(), strict=True):
            for future in futures:
                if not future.done():  # a reader cancelled meanwhile
                    future.set_result(reply)

    async def _send_write_chunks(
        self, shared: Any, client: Any, chunks: list[list[tuple[rq.Command | rq.Pipeline, asyncio.Future[Any]]]]
    ) -> None:
        for batch in chunks:
            claimed = self._claim(batch)
            if claimed:
                await self._send_writes(shared, client, claimed)

    @staticmethod
    async def _send_writes(
        shared: Any, client: Any, batch: list[tuple[rq.Command | rq.Pipeline, asyncio.Future[Any]]]
    ) -> None:
        # A claimed write's future is resolved here or by _fail only (its caller is shielded).
        if len(batch) == 1:
            request, future = batch[0]
            try:
                future.set_result(await _issue_one(shared, client, request))
            except Exception as exc:
                _fail([future], exc)
            return
        commands = [request.commands if isinstance(request, rq.Pipeline) else (request,) for request, _ in batch]
        ops = list(dict.fromkeys(request.op for request, _ in batch))
        started = shared.clock()
        try:
            with RedisCall(shared, ops[0]):
                async with client.pipeline(transaction=False) as pipe:
                    for own in commands:
                        for command in own:
                            rq.issue(pipe, command)
                    replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            _fail([future for _, future in batch], exc)
            return
        for op in ops[1:]:
            shared.stats.l2_timed(op, shared.clock() - started)
        at = 0
        for (request, future), own in zip(batch, commands, strict=True):
            mine, at = replies[at : at + len(own)], at + len(own)
            error = next((reply for reply in mine if isinstance(reply, Exception)), None)
            if error is not None:  # as RedisCall says an error reply to a call of its own
                refused = reply_error(shared, request.op, error)
                refused.__cause__ = error
                future.set_exception(refused)
            else:
                future.set_result(mine if isinstance(request, rq.Pipeline) else mine[0])


def _settled(task: asyncio.Future[Any]) -> None:
    """Let go of a task no caller awaits any more, and retrieve what it raised."""
    _riding.discard(task)
    if not task.cancelled():
        task.exception()


def _fail(futures: list[asyncio.Future[Any]], exc: Exception) -> None:
    """Give every caller still waiting its own copy of exc (resilience.own_copy)."""
    for future in futures:
        if not future.done():
            future.set_exception(own_copy(exc))


class AsyncMemoryTieredCache(AsyncTieredCache):
    """cache.MemoryTieredCache for asyncio."""

    def __init__(self, *, name: str, enabled: bool = True, **options: Unpack[CacheOptions]) -> None:
        shared, self._store = memory.start(name, enabled, dict(options))
        self._start(None, shared)

    @staticmethod
    def _new_parts() -> AsyncParts:
        return AsyncMemoryParts()

    async def _carry_out(self, request: rq.Request) -> Any:
        if isinstance(request, (rq.Call, rq.Flight, rq.Pause, rq.Background)):
            return await super()._carry_out(request)
        return memory.carry_out(self, request)


class AsyncParts(Parts):
    """AsyncTieredCache's single-flight, subscriber task and owned client (see base.Parts)."""

    flights: AsyncSingleFlight
    backgrounds: AsyncBackgrounds
    trips: RoundTrips
    subscriber: AsyncSubscriber | None = None

    def start(self, cache: Any) -> None:
        self.flights = AsyncSingleFlight()
        self.backgrounds = AsyncBackgrounds()
        self.trips = RoundTrips()
        self.subscriber = AsyncSubscriber(cache, self) if cache._shared.publisher is not None else None

    def after_fork(self, cache: Any) -> None:
        client = cache._redis
        _inherited.append((self.subscriber, self.backgrounds))  # never closed here: see base
        if clients.is_cluster(client):
            _inherited.append(clients.forget_connections(client))
        else:
            _inherited.append(client.connection_pool)
            client.connection_pool = pool_like(client)
        self.subscriber = None
        self.backgrounds = AsyncBackgrounds()  # the parent's refresh tasks belong to its loop
        # The same goes for asyncio objects the parent had already dropped: collected here, a
        # transport's close would unregister its descriptor number from the epoll the child
        # shares with the parent, where that number may now be a live socket of the parent's
        # (seen: the parent's subscriber never woke again). What the child inherited is never
        # collected in the child (gc.unfreeze() undoes this).
        gc.freeze()

    def abandon(self) -> None:
        subscriber = self.subscriber
        task = None if subscriber is None else subscriber.task
        if subscriber is None or task is None or task.done():
            return
        loop = task.get_loop()
        if loop.is_closed():
            return
        loop.call_soon_threadsafe(subscriber.end)  # the task closes its connections as it ends
        client = self.owned_client
        if client is not None:
            loop.call_soon_threadsafe(lambda: loop.create_task(_aclose_quietly(client)))


class AsyncMemoryParts(AsyncParts):
    """A memory cache's parts: single-flight alone (no client, no subscriber)."""

    def start(self, cache: Any) -> None:
        self.flights = AsyncSingleFlight()
        self.backgrounds = AsyncBackgrounds()
        self.subscriber = None

    def after_fork(self, cache: Any) -> None:
        _inherited.append(self.backgrounds)  # the child has its own copy of the store; the tasks are the parent's
        self.backgrounds = AsyncBackgrounds()

    def abandon(self) -> None:
        pass


class AsyncSubscriber:
    """The invalidation subscriber of an AsyncTieredCache: an asyncio task running
    core.invalidation.subscribe on connections of its own, started by the cache's first
    operation (or wait_ready)."""

    def __init__(self, cache: AsyncTieredCache, parts: AsyncParts) -> None:
        self._parts = parts
        self._shared = cache._shared
        self._client = cache._redis
        self.state = cache._shared.subscriber_state()
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._pubsub: Any = None
        self._tracker: Any = None
        self._node_client: Any = None  # on a cluster: the client of the node subscribed to
        self._attempts = 0
        self._sentinel = clients.is_sentinel(cache._redis)

    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        me = asyncio.current_task()
        plan = invalidation.subscribe(self._shared, self.state)
        try:
            request = next(plan)
            # stop() lets go of this task as it cancels it: a cancellation can be swallowed
            # by a library (Python 3.11's wait_for, under redis-py's socket writes, returns
            # a result that lands with it), and the task must end anyway.
            while self.task is me:
                try:
                    result = await self._carry_out(request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    request = plan.throw(exc)
                else:
                    request = plan.send(result)
        finally:
            plan.close()
            self.state.lost("disconnect")  # no subscriber, no L1 (invariant 3): e.g. its loop ended
            await _bounded(self._disconnect())

    async def _carry_out(self, request: rq.SubscriberRequest) -> Any:
        try:
            match request:
                case rq.Receive(timeout):
                    return await self._pubsub.get_message(timeout=timeout)
                case rq.Do.PING:
                    return await self._pubsub.ping()
                case rq.Ready(serving):
                    return self.ready.set() if serving else self.ready.clear()
                case rq.Subscribe(channels):
                    await self._disconnect()
                    self._pubsub = await self._open_pubsub(channels[0])
                    if self._shared.sharded:
                        return await self._pubsub.ssubscribe(*channels)
                    subscribed = await self._pubsub.subscribe(*channels)
                    if self._sentinel:
                        self._shared.master_seen(clients.master_address(self._pubsub.connection))
                    return subscribed
                case rq.Sleep(seconds):
                    return await asyncio.sleep(seconds)
                case rq.Do.DISCONNECT:
                    return await self._disconnect()
                # the CLIENT TRACKING handshake (invalidation="tracking")
                case rq.WatchPushes(pushed):

                    async def on_push(response: Any) -> None:
                        pushed.append(response)

                    # RESP2 parsers have no pushes: invalidations come as messages then.
                    watch = getattr(self._pubsub.connection._parser, "set_invalidation_push_handler", None)
                    if watch is not None:
                        watch(on_push)
                    writer = getattr(self._pubsub.connection, "_writer", None)
                    return writer.get_extra_info("sockname") if writer is not None else None
                case rq.Do.OPEN_TRACKER:
                    await self._close_tracker()
                    tracker_pool = pool_like(self._client)
                    self._tracker = redis_aio.Redis(connection_pool=tracker_pool, single_connection_client=True)
                    return None
                case rq.Do.CLIENT_LIST:
                    return await self._tracker.client_list(_type="pubsub")
                case rq.TrackingOn(client_id, prefix):
                    return await self._tracker.client_tracking_on(clientid=client_id, bcast=True, prefix=[prefix])
                case rq.Do.TRACKING_INFO:
                    return await self._tracker.execute_command("CLIENT", "TRACKINGINFO")
                case rq.Do.CLOSE_TRACKER:
                    return await self._close_tracker()
        except redis_aio.ResponseError as exc:
            raise RedisReplyError(str(exc)) from exc

    async def _open_pubsub(self, channel: bytes) -> Any:
        """Subscriber._open_pubsub for asyncio (a cluster client learns its nodes on its
        first call)."""
        self._attempts += 1
        if self._parts.embedded is not None and self._attempts > 1:  # the server died: start it again
            await asyncio.get_running_loop().run_in_executor(None, embedded.ensure, self._parts.embedded)
        if not self._shared.sharded:
            return self._client.pubsub()
        if self._attempts > 1:  # a node failed, or the slot moved: ask the cluster again
            await self._client.nodes_manager.initialize()
        await self._client.initialize()
        node = self._client.get_node_from_key(channel)
        settings = clients.node_settings(self._client, redis_aio.Redis)
        self._node_client = redis_aio.Redis(host=node.host, port=node.port, retry=Retry(NoBackoff(), 0), **settings)
        return self._node_client.pubsub()

    async def _close_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            await _bounded(_aclose_quietly(tracker))

    async def _disconnect(self) -> None:
        await self._close_tracker()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _bounded(pubsub.aclose())
        node_client, self._node_client = self._node_client, None
        if node_client is not None:
            await _bounded(_aclose_quietly(node_client))

    def end(self) -> asyncio.Task[None] | None:
        """Let go of the task and cancel it (on its loop's thread): it ends at its next step
        even if the cancellation is lost."""
        task, self.task = self.task, None
        if task is None or task.done():
            return None
        task.cancel()
        return task

    async def stop(self, timeout: float = 2.0) -> None:
        """End the task and give it `timeout` seconds to let go of its connection (a
        redis.asyncio close can wait on a broken connection; that must not hang close())."""
        task = self.end()
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)


async def _aclose_quietly(client: Any) -> None:
    """Close a client and the pool made for it; a broken connection may fail to close,
    and is gone either way."""
    try:
        await clients.aclose(client)
    except Exception:
        pass


async def _bounded(closing: Awaitable[Any], timeout: float = 1.0) -> None:
    """Await a close for at most timeout seconds, whatever it raises: closing a connection
    that died can fail, or wait on it, and it is gone either way."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done and not task.cancelled():
        task.exception()  # retrieved: a failed close is not worth a warning
