"""TieredCache: the sync driver. Every operation is a plan in core.py; this file only says
how a plan's requests are carried out with redis-py's blocking client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from .core import MISSING, Call, CacheBase, Command, RedisCall, log, ready_call_result
from .invalidation import TRACKING_CHANNEL, SubscriberState, find_client_id, tracking_is_on
from .loading import SingleFlight

CLIENT_DEFAULTS = {
    "socket_timeout": 0.5,
    "socket_connect_timeout": 0.5,
    "health_check_interval": 15,
}


def client_options(options: dict[str, Any], retry_class: type = Retry) -> dict[str, Any]:
    """Fail-fast defaults for a client we make: short timeouts, no retries (the circuit
    breaker decides when to try again). retry_class: redis-py's sync or asyncio Retry."""
    merged = {**CLIENT_DEFAULTS, "retry": retry_class(NoBackoff(), 0)}
    merged.update(options)
    return merged


class TieredCache(CacheBase):
    """A two-tier cache: the compiled L1 in this process, Redis shared by all of them."""

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._flights = SingleFlight()
        self._subscriber: Subscriber | None = None
        if self._shared.publisher is not None:
            self._subscriber = Subscriber(self)
            self._subscriber.start()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until the invalidation subscription is confirmed and L1 serves; True if so.

        Until then every read goes to Redis (L1 neither serves nor stores)."""
        if self._subscriber is None:
            return True
        return self._subscriber.ready.wait(timeout) and self.l1_enabled

    @classmethod
    def from_url(cls, url: str, *, name: str, redis_options: dict[str, Any] | None = None, **options: Any) -> TieredCache:
        """A cache on a new redis-py client for url (redis://, rediss://, unix://).

        redis_options go to the client: socket_timeout and socket_connect_timeout default to
        0.5 s, retries are off (the circuit breaker takes over)."""
        client = redis_py.Redis.from_url(url, **client_options(redis_options or {}))
        cache = cls(client, name=name, **options)
        cache._owns_client = True
        return cache

    # -- the driver ---------------------------------------------------------------------------

    def _run(self, plan: Any) -> Any:
        try:
            request = next(plan)
            while True:
                try:
                    result = self._carry_out(request)
                except BaseException as exc:
                    request = plan.throw(exc)
                else:
                    request = plan.send(result)
        except StopIteration as done:
            return done.value

    def _carry_out(self, request: Any) -> Any:
        if type(request) is Call:
            return ready_call_result(self, request.func(*request.args))
        with RedisCall(self._shared, request.op):
            if type(request) is Command:
                return getattr(self._redis, request.op)(*request.args, **request.kwargs)
            with self._redis.pipeline(transaction=request.transaction) as pipe:
                for command in request.commands:
                    getattr(pipe, command.op)(*command.args, **command.kwargs)
                return pipe.execute()

    # -- reads ----------------------------------------------------------------------------------

    # get() itself is TieredFront.get: an L1 hit is answered in C, the rest comes here.
    def _get_slow(self, key: Any, default: Any, model: Any) -> Any:
        sh = self._shared
        if sh.loader is None:
            value = self._run(self._plan_get(key, model))
            return default if value is MISSING else value
        # model=None means the fast path has already looked in L1 (and counted the miss).
        return self._loaded(self._get_or_load(key, sh.loader, None, look_in_l1=model is not None), default, model)

    def get_or_load(self, key: Any, loader: Callable[[Any], Any], ttl: float | None = None) -> Any:
        """L1, then Redis, then loader(key); what the loader returns is stored in both tiers.

        Concurrent calls for one key in this process make one loader call; its exception
        reaches every caller and nothing is cached. None is not cached unless cache_none."""
        return self._get_or_load(key, loader, ttl, look_in_l1=True)

    def _get_or_load(self, key: Any, loader: Any, ttl: Any, look_in_l1: bool) -> Any:
        value, l1_key, load = self._start_load(key, loader, ttl, look_in_l1)
        return value if value is not MISSING else self._flights.run(l1_key, load)

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """A dict of the keys found in L1 or Redis (one MGET for all L1 misses)."""
        return self._run(self._plan_get_many(keys))

    def exists(self, key: Any) -> bool:
        """True if key is in L1 or Redis (False if Redis cannot be asked)."""
        return self._run(self._plan_exists(key))

    def ttl(self, key: Any) -> float | None:
        """Seconds key has left in Redis; math.inf if it never expires; None if absent."""
        return self._run(self._plan_ttl(key))

    # -- writes -----------------------------------------------------------------------------

    def set(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """writer(key, value), then Redis, then L1. False if Redis could not be written
        (the local copy is dropped); raises CacheUnavailable instead when strict."""
        return self._run(self._plan_set(key, value, ttl))

    def set_many(self, mapping: Any, ttl: float | None = None) -> bool:
        """set for every pair, in one round trip; nothing is written if any value cannot be."""
        return self._run(self._plan_set_many(mapping, ttl))

    def delete(self, key: Any) -> bool:
        """writer(key, DELETED), then Redis and L1. True if Redis held the key."""
        removed = self._run(self._plan_delete([key], "delete"))
        return bool(removed)

    def delete_many(self, keys: Iterable[Any]) -> int:
        """delete for every key, in one round trip: how many Redis held (0 if unreachable)."""
        return self._run(self._plan_delete(list(keys), "delete_many")) or 0

    def expire(self, key: Any, ttl: float | None) -> bool:
        """Give key a new ttl from now (None: the default; inf: never); False if absent."""
        return self._run(self._plan_expire(key, ttl))

    def incr(self, key: Any, amount: int = 1, ttl: float | None = None) -> int:
        """Add amount to the integer under key (0 if absent) in Redis; the new value.

        A counter this call creates gets ttl (None: the default). Counters are read from
        Redis, never held in L1 by a write. Raises CacheUnavailable if Redis is down."""
        return self._run(self._plan_incr(key, amount, ttl))

    def clear(self) -> bool:
        """Remove every key of this namespace (nested ones too) from Redis and L1."""
        return self._run(self._plan_clear())

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the invalidation subscriber, and close the Redis client if this cache made it
        (from_url). A namespace view shares both with its cache and closes neither."""
        if self._keys.path:
            return
        self._stop_metrics()
        if self._subscriber is not None:
            self._subscriber.stop()
        if self._owns_client:
            self._redis.close()

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _Silent(Exception):
    """The subscriber heard nothing from Redis for longer than max_silence."""


class Subscriber(threading.Thread):
    """The invalidation subscriber of a TieredCache: a daemon thread on its own connection."""

    POLL = 0.05  # seconds between checks of the heartbeat, the silence and missing numbers

    def __init__(self, cache: TieredCache) -> None:
        super().__init__(name=f"tiercache-subscriber-{cache.name}", daemon=True)
        sh = cache._shared
        self._client = cache._redis
        self._channel = sh.publisher.channel
        self._stats = sh.stats
        self.state = SubscriberState(sh.guard, cache._keys, sh.publisher.origin, sh.bus_settings, sh.stats)
        sh.bus_state = self.state
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._pubsub: Any = None
        self._shared = sh
        self._prefix = cache._keys.cache_prefix
        self._tracker: Any = None  # the connection that holds CLIENT TRACKING on
        self._pushed: list[Any] = []

    def _on_push(self, response: Any) -> None:
        self._pushed.append(response[1])

    def _start_tracking(self) -> None:
        """Turn on CLIENT TRACKING BCAST for this cache's prefix, redirected to our
        subscriber; if the server cannot, stay with pub/sub (said once in the log)."""
        sh = self._shared
        if not sh.tracking_wanted:
            return
        self._close_tracker()
        pool = self._client.connection_pool
        tracker = redis_py.Redis(connection_pool=type(pool)(**pool.connection_kwargs), single_connection_client=True)
        try:
            # Under RESP3 (redis-py's default) the server sends invalidations as pushes, which
            # redis-py hands to this handler instead of returning them as messages.
            self._pubsub.connection._parser.set_invalidation_push_handler(self._on_push)
            sock = getattr(self._pubsub.connection, "_sock", None)
            client_id = find_client_id(tracker.client_list(_type="pubsub"), sock.getsockname() if sock else None)
            if client_id is None:
                raise redis_py.RedisError("cannot find the subscriber's connection in CLIENT LIST")
            tracker.client_tracking_on(clientid=client_id, bcast=True, prefix=[self._prefix])
        except redis_py.ResponseError as exc:  # an old server: no CLIENT TRACKING
            _close_quietly(tracker)
            if sh.tracking:
                raise
            log.warning("tiercache %s: CLIENT TRACKING unavailable (%s): using pub/sub only", sh.name, exc)
            sh.tracking_wanted = False
            return
        except Exception:
            _close_quietly(tracker)
            raise
        self._tracker = tracker
        sh.tracking = True

    def _check_tracking(self) -> None:
        """Tracking lives on its own connection: if that was lost, so are invalidations."""
        if self._tracker is not None and not tracking_is_on(self._tracker.execute_command("CLIENT", "TRACKINGINFO")):
            raise _Silent()

    def _close_tracker(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            _close_quietly(tracker)

    def run(self) -> None:
        state, backoff = self.state, 0.05
        while not self._stopping.is_set():
            reason = "disconnect"
            try:
                self._pubsub = self._client.pubsub()
                channels = [self._channel, TRACKING_CHANNEL] if self._shared.tracking_wanted else [self._channel]
                self._pubsub.subscribe(*channels)
                state.expect(len(channels))
                while not self._stopping.is_set():
                    message = self._pubsub.get_message(timeout=self.POLL)
                    now = time.monotonic()
                    if message is not None and state.on_message(message, now):
                        self._start_tracking()
                        state.confirmed(now)
                        self.ready.set()
                        backoff = 0.05
                    state.drain(self._pushed)
                    action = state.tick(now)
                    if action == "silence":
                        reason = "silence"
                        raise _Silent()
                    if action == "ping":
                        self._pubsub.ping()
                        self._check_tracking()
            except Exception:  # any failure of the connection: shut L1, reconnect
                if self._stopping.is_set():
                    break
                state.lost(reason)
                self.ready.clear()
                self._stats.reconnects += 1
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 1.0)
            finally:
                self._close_pubsub()

    def _close_pubsub(self) -> None:
        self._close_tracker()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail too; it is gone either way
                pass

    def stop(self, timeout: float = 2.0) -> None:
        self._stopping.set()
        self.join(timeout)


def _close_quietly(client: Any) -> None:
    """Close a client and the pool made for it; a broken connection may fail to close,
    and is gone either way."""
    try:
        client.close()
        client.connection_pool.disconnect()
    except Exception:
        pass
