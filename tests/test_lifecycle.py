"""A cache lives in exactly the process it was made for (invariant 11): after a fork the
child's cache starts afresh, and a cache dropped without close() lets go of its thread and
connections (with a ResourceWarning, as asyncio does)."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import threading
import warnings

import pytest
import redis

from tests.conftest import wait_until
from tiercache import TieredCache

BUS = {"heartbeat": 0.1, "max_silence": 0.4, "gap_grace": 0.2}


def _child(cache, results):
    """Runs in the forked child: report what the inherited cache does there."""
    try:
        report = {
            "empty_and_shut": len(cache.l1) == 0 and not cache.l1_enabled,
            "counts_from_zero": cache.stats()["l1_hits"] == 0,
            "origin": cache._shared.publisher.origin,
        }
        report["ready"] = cache.wait_ready(10)  # a subscriber of its own
        report["reads_redis"] = cache.get("k") == "v1"
        cache.set("k", "from-child")
        report["hits_count"] = cache.get("k") == "from-child" and cache.stats()["l1_hits"] == 1
        cache.close()
        results.put(report)
    except BaseException as exc:  # the parent reports it
        results.put({"error": repr(exc)})


def test_a_forked_child_gets_a_fresh_cache_and_the_parent_hears_it(redis_server, cache_name):
    with TieredCache.from_url(redis_server.url, name=cache_name, **BUS) as cache:
        assert cache.wait_ready(10)
        cache.set("k", "v1")
        for _ in range(3):
            assert cache.get("k") == "v1"
        hits = cache.stats()["l1_hits"]
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            child = context.Process(target=_child, args=(cache, results))
            child.start()
        report = results.get(timeout=30)
        child.join(30)
        assert "error" not in report, report
        assert report.pop("origin") != cache._shared.publisher.origin
        assert all(report.values()), report
        # the parent heard the child's write (a new origin), and its own state is untouched
        assert wait_until(lambda: cache.get("k") == "from-child")
        assert cache.stats()["l1_hits"] >= hits and cache.l1_enabled


def test_a_cache_dropped_without_close_lets_go_of_its_thread_and_connections(redis_server, cache_name):
    client = redis.Redis.from_url(redis_server.url)

    def subscribers():
        return sum(1 for entry in client.client_list() if entry.get("sub") not in (None, "0"))

    threads, subs = threading.active_count(), subscribers()
    for index in range(5):
        cache = TieredCache.from_url(redis_server.url, name=f"{cache_name}-{index}", **BUS)
        assert cache.wait_ready(10)
        view = cache.namespace("v")
        del cache
        gc.collect()
        assert view.get("k") is None  # a live view keeps its cache alive
        with pytest.warns(ResourceWarning, match="unclosed TieredCache"):
            del view
            gc.collect()
    assert wait_until(lambda: threading.active_count() == threads and subscribers() == subs)
    client.close()


_ASYNC_CACHE = None


def _async_child(results):
    async def main():
        cache = _ASYNC_CACHE
        report = {"ready": await cache.wait_ready(10), "reads": await cache.get("k") == "parent"}
        await cache.set("k", "child")
        gc.collect()  # nothing the parent left behind may be finalized from here
        await cache.close()
        results.put(report)

    asyncio.run(main())
    gc.collect()


async def test_a_forked_child_uses_an_async_cache_without_breaking_the_parents(redis_server, cache_name):
    global _ASYNC_CACHE
    from tiercache import AsyncTieredCache

    cache = _ASYNC_CACHE = AsyncTieredCache.from_url(redis_server.url, name=cache_name, **BUS)
    try:
        assert await cache.wait_ready(10)
        await cache.set("k", "parent")
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            child = context.Process(target=_async_child, args=(results,))
            child.start()
        while child.is_alive():
            await asyncio.sleep(0.05)
        assert child.exitcode == 0 and results.get(timeout=5) == {"ready": True, "reads": True}

        async def sees_the_childs_write():
            return await cache.get("k") == "child"

        deadline = asyncio.get_running_loop().time() + 10
        while not await sees_the_childs_write():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await cache.set("k", "parent again")  # the parent's own connections still work
        stats = cache.stats()
        assert (stats["l2_errors"], stats["reconnects"]) == (0, 0)
    finally:
        _ASYNC_CACHE = None
        await cache.close()
        await asyncio.sleep(0.1)
        stuck = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
        assert not stuck  # the subscriber ended: its socket still wakes this loop
