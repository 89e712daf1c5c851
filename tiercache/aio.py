"""AsyncTieredCache: the asyncio driver. Every operation is a plan in core.py; this file only
says how a plan's requests are awaited with redis.asyncio."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as redis_aio
from redis.asyncio.retry import Retry

from .cache import client_options
from .core import MISSING, Call, CacheBase, Command, RedisCall, log
from .invalidation import TRACKING_CHANNEL, SubscriberState, find_client_id, tracking_is_on
from .loading import AsyncSingleFlight


class AsyncTieredCache(CacheBase):
    """TieredCache for asyncio: the same methods, awaitable, on the same compiled L1."""

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._flights = AsyncSingleFlight()
        self._subscriber = AsyncSubscriber(self) if self._shared.publisher is not None else None

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """Start the invalidation subscriber if needed and wait until its subscription is
        confirmed and L1 serves; True if so. (Any operation starts it too.)"""
        if self._subscriber is None:
            return True
        self._subscriber.ensure_started()
        try:
            await asyncio.wait_for(self._subscriber.ready.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return self.l1_enabled

    @classmethod
    def from_url(cls, url: str, *, name: str, redis_options: dict[str, Any] | None = None, **options: Any) -> AsyncTieredCache:
        """A cache on a new redis.asyncio client for url (see TieredCache.from_url)."""
        client = redis_aio.Redis.from_url(url, **client_options(redis_options or {}, Retry))
        cache = cls(client, name=name, **options)
        cache._owns_client = True
        return cache

    # -- the driver ---------------------------------------------------------------------------

    async def _run(self, plan: Any) -> Any:
        if self._subscriber is not None and self._subscriber.task is None:
            self._subscriber.ensure_started()
        try:
            request = next(plan)
            while True:
                try:
                    result = await self._carry_out(request)
                except BaseException as exc:
                    request = plan.throw(exc)
                else:
                    request = plan.send(result)
        except StopIteration as done:
            return done.value

    async def _carry_out(self, request: Any) -> Any:
        if type(request) is Call:
            result = request.func(*request.args)
            return await result if inspect.isawaitable(result) else result
        with RedisCall(self._shared, request.op):
            if type(request) is Command:
                return await getattr(self._redis, request.op)(*request.args, **request.kwargs)
            async with self._redis.pipeline(transaction=request.transaction) as pipe:
                for command in request.commands:
                    getattr(pipe, command.op)(*command.args, **command.kwargs)
                return await pipe.execute()

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: Any, default: Any = None, model: Any = None) -> Any:
        """The value for key from L1, else Redis, else the loader; default on a miss."""
        if model is None:
            value = self._l1_get(key)  # compiled: an L1 hit costs one C call
            if value is not MISSING:
                return value
        return await self._get_slow(key, default, model)

    async def _get_slow(self, key: Any, default: Any, model: Any) -> Any:
        sh = self._shared
        if sh.loader is None:
            value = await self._run(self._plan_get(key, model))
            return default if value is MISSING else value
        return self._loaded(await self._get_or_load(key, sh.loader, None, look_in_l1=model is not None), default, model)

    async def get_or_load(self, key: Any, loader: Callable[[Any], Any], ttl: float | None = None) -> Any:
        """L1, then Redis, then loader(key) (a coroutine function or a plain one); one load
        per key in this process at a time, shared by every task that asks meanwhile."""
        return await self._get_or_load(key, loader, ttl, look_in_l1=True)

    async def _get_or_load(self, key: Any, loader: Any, ttl: Any, look_in_l1: bool) -> Any:
        value, l1_key, load = self._start_load(key, loader, ttl, look_in_l1)
        return value if value is not MISSING else await self._flights.run(l1_key, load)

    async def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """A dict of the keys found in L1 or Redis (one MGET for all L1 misses)."""
        return await self._run(self._plan_get_many(keys))

    async def exists(self, key: Any) -> bool:
        """True if key is in L1 or Redis (False if Redis cannot be asked)."""
        return await self._run(self._plan_exists(key))

    async def ttl(self, key: Any) -> float | None:
        """Seconds key has left in Redis; math.inf if it never expires; None if absent."""
        return await self._run(self._plan_ttl(key))

    # -- writes -----------------------------------------------------------------------------

    async def set(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """writer(key, value), then Redis, then L1; False if Redis could not be written."""
        return await self._run(self._plan_set(key, value, ttl))

    async def set_many(self, mapping: Any, ttl: float | None = None) -> bool:
        """set for every pair, in one round trip; nothing is written if any value cannot be."""
        return await self._run(self._plan_set_many(mapping, ttl))

    async def delete(self, key: Any) -> bool:
        """writer(key, DELETED), then Redis and L1. True if Redis held the key."""
        return bool(await self._run(self._plan_delete([key], "delete")))

    async def delete_many(self, keys: Iterable[Any]) -> int:
        """delete for every key, in one round trip: how many Redis held (0 if unreachable)."""
        return await self._run(self._plan_delete(list(keys), "delete_many")) or 0

    async def expire(self, key: Any, ttl: float | None) -> bool:
        """Give key a new ttl from now (None: the default; inf: never); False if absent."""
        return await self._run(self._plan_expire(key, ttl))

    async def incr(self, key: Any, amount: int = 1, ttl: float | None = None) -> int:
        """Add amount to the integer under key in Redis; the new value (see TieredCache.incr)."""
        return await self._run(self._plan_incr(key, amount, ttl))

    async def clear(self) -> bool:
        """Remove every key of this namespace (nested ones too) from Redis and L1."""
        return await self._run(self._plan_clear())

    # -- lifetime -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the invalidation subscriber, and close the Redis client if this cache made it
        (from_url). A namespace view shares both with its cache and closes neither."""
        if self._keys.path:
            return
        self._stop_metrics()
        if self._subscriber is not None:
            await self._subscriber.stop()
        if self._owns_client:
            await _bounded(self._redis.aclose(), timeout=5.0)

    async def __aenter__(self) -> AsyncTieredCache:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class AsyncSubscriber:
    """The invalidation subscriber of an AsyncTieredCache: an asyncio task on its own
    connection, started by the cache's first operation (or wait_ready)."""

    POLL = 0.05

    def __init__(self, cache: AsyncTieredCache) -> None:
        sh = cache._shared
        self._client = cache._redis
        self._channel = sh.publisher.channel
        self._stats = sh.stats
        self.state = SubscriberState(sh.guard, cache._keys, sh.publisher.origin, sh.bus_settings, sh.stats)
        sh.bus_state = self.state
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self._shared = sh
        self._prefix = cache._keys.cache_prefix
        self._tracker: Any = None
        self._pushed: list[Any] = []

    async def _on_push(self, response: Any) -> None:
        self._pushed.append(response[1])

    async def _start_tracking(self, pubsub: Any) -> None:
        """CLIENT TRACKING BCAST for this cache's prefix, redirected to our subscriber; if
        the server cannot, stay with pub/sub (see TieredCache's Subscriber)."""
        sh = self._shared
        if not sh.tracking_wanted:
            return
        await self._close_tracker()
        pool = self._client.connection_pool
        tracker = redis_aio.Redis(connection_pool=type(pool)(**pool.connection_kwargs), single_connection_client=True)
        try:
            pubsub.connection._parser.set_invalidation_push_handler(self._on_push)
            writer = getattr(pubsub.connection, "_writer", None)
            sockname = writer.get_extra_info("sockname") if writer is not None else None
            client_id = find_client_id(await tracker.client_list(_type="pubsub"), sockname)
            if client_id is None:
                raise redis_aio.RedisError("cannot find the subscriber's connection in CLIENT LIST")
            await tracker.client_tracking_on(clientid=client_id, bcast=True, prefix=[self._prefix])
        except redis_aio.ResponseError as exc:
            await _aclose_quietly(tracker)
            if sh.tracking:
                raise
            log.warning("tiercache %s: CLIENT TRACKING unavailable (%s): using pub/sub only", sh.name, exc)
            sh.tracking_wanted = False
            return
        except BaseException:
            await _aclose_quietly(tracker)
            raise
        self._tracker = tracker
        sh.tracking = True

    async def _close_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            await _aclose_quietly(tracker)

    def ensure_started(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        state, backoff = self.state, 0.05
        while True:
            reason = "disconnect"
            pubsub = None
            try:
                pubsub = self._client.pubsub()
                channels = [self._channel, TRACKING_CHANNEL] if self._shared.tracking_wanted else [self._channel]
                await pubsub.subscribe(*channels)
                state.expect(len(channels))
                while True:
                    message = await pubsub.get_message(timeout=self.POLL)
                    now = time.monotonic()
                    if message is not None and state.on_message(message, now):
                        await self._start_tracking(pubsub)
                        state.confirmed(now)
                        self.ready.set()
                        backoff = 0.05
                    state.drain(self._pushed)
                    action = state.tick(now)
                    if action == "silence":
                        reason = "silence"
                        raise ConnectionError("no word from Redis past max_silence")
                    if action == "ping":
                        await pubsub.ping()
                        if self._tracker is not None and not tracking_is_on(
                            await self._tracker.execute_command("CLIENT", "TRACKINGINFO")
                        ):
                            raise ConnectionError("CLIENT TRACKING was lost with its connection")
            except asyncio.CancelledError:
                raise
            except Exception:  # any failure of the connection: shut L1, reconnect
                state.lost(reason)
                self.ready.clear()
                self._stats.reconnects += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                await _bounded(self._close_tracker())
                if pubsub is not None:
                    await _bounded(pubsub.aclose())

    async def stop(self, timeout: float = 2.0) -> None:
        """Cancel the task and give it `timeout` seconds to let go of its connection (a
        redis.asyncio close can wait on a broken connection; that must not hang close())."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=timeout)


async def _aclose_quietly(client: Any) -> None:
    """Close a client and the pool made for it; a broken connection may fail to close,
    and is gone either way."""
    try:
        await client.aclose(close_connection_pool=True)
    except Exception:
        pass


async def _bounded(closing: Any, timeout: float = 1.0) -> None:
    """Await a close for at most timeout seconds, whatever it raises: closing a connection
    that died can fail, or wait on it, and it is gone either way."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done and not task.cancelled():
        task.exception()  # retrieved: a failed close is not worth a warning
