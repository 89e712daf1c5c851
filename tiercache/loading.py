"""Single-flight: concurrent misses on one key in one process make one loader call.

A loader that asks the cache for its own key would wait for itself forever (it is the
flight it waits on). The keys a flight is loading are kept in a context variable, which
follows the loader into whatever it calls (threads: the same context; asyncio: the task
running the load has its own copy), so such a call raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import CacheError

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
