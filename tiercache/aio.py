"""AsyncTieredCache: the asyncio driver. Every operation is a plan in core.py; this file only
says how a plan's requests are awaited with redis.asyncio."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as redis_aio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .cache import UNAVAILABLE, client_options
from .codec import rebuild
from .core import MISSING, Call, CacheBase, Command
from .errors import CacheUnavailable
from .loading import AsyncSingleFlight


class AsyncTieredCache(CacheBase):
    """TieredCache for asyncio: the same methods, awaitable, on the same compiled L1."""

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._flights = AsyncSingleFlight()

    @classmethod
    def from_url(cls, url: str, *, name: str, redis_options: dict[str, Any] | None = None, **options: Any) -> AsyncTieredCache:
        """A cache on a new redis.asyncio client for url (see TieredCache.from_url)."""
        settings = client_options(redis_options or {})
        if "retry" not in (redis_options or {}):
            settings["retry"] = Retry(NoBackoff(), 0)
        client = redis_aio.Redis.from_url(url, **settings)
        cache = cls(client, name=name, **options)
        cache._owns_client = True
        return cache

    # -- the driver ---------------------------------------------------------------------------

    async def _run(self, plan: Any) -> Any:
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
        sh = self._shared
        if not sh.breaker.allow():
            sh.short_circuited()
            raise CacheUnavailable(f"cache {sh.name!r}: Redis is failing, circuit open")
        try:
            if type(request) is Command:
                result = await getattr(self._redis, request.op)(*request.args, **request.kwargs)
            else:
                async with self._redis.pipeline(transaction=request.transaction) as pipe:
                    for command in request.commands:
                        getattr(pipe, command.op)(*command.args, **command.kwargs)
                    result = await pipe.execute()
        except UNAVAILABLE as exc:
            sh.l2_failed(request.op if type(request) is Command else "pipeline", exc)
            raise CacheUnavailable(f"cache {sh.name!r}: {exc}") from exc
        sh.breaker.success()
        return result

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
        value = await self._get_or_load(key, sh.loader, None, look_in_l1=model is not None)
        if value is None and not sh.cache_none:
            return default
        return rebuild(value, model)

    async def get_or_load(self, key: Any, loader: Callable[[Any], Any], ttl: float | None = None) -> Any:
        """L1, then Redis, then loader(key) (a coroutine function or a plain one); one load
        per key in this process at a time, shared by every task that asks meanwhile."""
        return await self._get_or_load(key, loader, ttl, look_in_l1=True)

    async def _get_or_load(self, key: Any, loader: Any, ttl: Any, look_in_l1: bool) -> Any:
        l1_key = self._l1_key(key)
        ttl_ms = self._shared.ttl_ms(ttl)
        self._check_loader(loader)
        if look_in_l1:
            value = self._l1_get(key)
            if value is not MISSING:
                return value
        return await self._flights.run(l1_key, lambda: self._run(self._plan_load(key, l1_key, loader, ttl_ms)))

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
        """Close the Redis client if this cache made it (from_url)."""
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> AsyncTieredCache:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()
