"""Single-flight: concurrent misses on one key in one process make one loader call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any


class _Call:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Threads: the first caller for a key runs the function, the others wait for its result
    (or its exception, which every waiter receives)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}

    def run(self, key: Any, func: Callable[[], Any]) -> Any:
        with self._lock:
            existing = self._calls.get(key)
            leader = existing is None
            call = self._calls[key] = _Call() if existing is None else existing
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.value
        try:
            call.value = func()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
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
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(func())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: Any, task: asyncio.Future[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every waiter was cancelled
