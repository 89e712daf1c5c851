"""Single-flight: concurrent misses on one key in one process make one loader call.

A loader that asks the cache for its own key would wait for itself forever (it is the
flight it waits on). The keys a flight is loading are kept in a context variable, which
follows the loader into whatever it calls (threads: the same context; asyncio: the task
running the load has its own copy), so such a call raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import CacheError

log = logging.getLogger(__name__)

_loading: contextvars.ContextVar[frozenset[Any]] = contextvars.ContextVar("tiercache_loading", default=frozenset())


def _refuse_recursion(key: Any) -> None:
    if key in _loading.get():
        raise CacheError(
            f"the loader of {key!r} asked the cache for {key!r} itself: it would wait for its own result forever"
        )


class _Call:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Threads: the first caller for a key runs the function, the others wait for its result
    (or its exception, which every waiter receives).

    A waiter waits at most `patience` seconds (the cache's lease_ttl, as a waiter for the
    fleet's lease does), then runs the function itself: a loader that asks for its own key
    from another thread (where the context variable does not follow), or a leader stuck or
    lost to an interrupt, must not hold its waiters forever."""

    def __init__(self, patience: float | None = None) -> None:
        self.patience = patience
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}

    def run(self, key: Any, func: Callable[[], Any]) -> Any:
        _refuse_recursion(key)
        with self._lock:
            existing = self._calls.get(key)
            leader = existing is None
            call = self._calls[key] = _Call() if existing is None else existing
        if not leader:
            if not call.done.wait(self.patience):
                return func()  # waited past patience: load alone
            if call.error is not None:
                raise call.error
            return call.value
        token = _loading.set(_loading.get() | {key})
        try:
            call.value = func()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            _loading.reset(token)
            with self._lock:
                del self._calls[key]
            call.done.set()
        return call.value


class AsyncSingleFlight:
    """asyncio: the first caller for a key starts a task, every caller awaits it. Cancelling a
    caller does not cancel the load the others are waiting for."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Future[Any]] = {}

    async def run(self, key: Any, func: Callable[[], Awaitable[Any]]) -> Any:
        _refuse_recursion(key)
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(_loading_key(key, func))
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: Any, task: asyncio.Future[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled


async def _loading_key(key: Any, func: Callable[[], Awaitable[Any]]) -> Any:
    """func() in its own task, with key marked as loading in that task's context."""
    _loading.set(_loading.get() | {key})
    return await func()


class Backgrounds:
    """Threads: refreshes running apart from their callers (requests.Background), at most
    one per key; another asked for meanwhile is dropped. A refresh raises nothing it
    expects (its plan counts and logs the loader's failures); anything else is logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Any] = set()
        self._threads: set[threading.Thread] = set()
        self._stopped = False

    def start(self, key: Any, run: Callable[[], Any]) -> None:
        with self._lock:
            if key in self._running or self._stopped:
                return
            if key is not None:  # None: never dropped
                self._running.add(key)

        def body() -> None:
            try:
                run()
            except CacheError:
                pass  # closed meanwhile
            except Exception:
                log.exception("tiercache: a background refresh of %r failed", key)
            finally:
                with self._lock:
                    self._running.discard(key)
                    self._threads.discard(thread)

        thread = threading.Thread(target=body, name="tiercache-refresh", daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def stop(self, timeout: float) -> None:
        """Start no more, and give those running up to timeout seconds to finish (the cache
        is closing: one still running then fails at its next round trip, and its lease
        expires by itself)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class AsyncBackgrounds:
    """asyncio: Backgrounds as tasks of the cache's loop, cancelled when it closes."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Future[Any]] = {}

    def start(self, key: Any, run: Callable[[], Awaitable[Any]]) -> None:
        if key is not None and key in self._tasks:
            return
        task = asyncio.ensure_future(run())
        key = (task,) if key is None else key  # never dropped: filed under itself
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: Any, task: asyncio.Future[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, CacheError):
            log.error("tiercache: a background refresh of %r failed", key, exc_info=error)

    async def stop(self, timeout: float) -> None:
        """Give the refreshes running up to timeout seconds, then cancel the rest (each gives
        its lease back as it ends)."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
