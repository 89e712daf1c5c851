"""The fleet-wide load lease against a real Redis: one loader call for a cold key across
processes and threads, no stale value resurrected by a load that raced a write, and a
holder that dies only delays the others by lease_ttl."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import warnings

import pytest
import redis

from tests.conftest import wait_until
from tiercache import TieredCache

from .conftest import L2_KINDS


@pytest.fixture(params=L2_KINDS)
def l2_kind(request):
    """Every test here on one Redis, Redis Cluster and Sentinel (those pinned to one aside)."""
    return request.param


BUS = {"heartbeat": 0.1, "max_silence": 0.4, "gap_grace": 0.2}


def test_a_load_that_raced_a_delete_does_not_put_the_old_value_back(make_cache):
    database = {"k": "old row"}
    loader_started, row_read = threading.Event(), threading.Event()

    def slow_loader(key):
        value = database[key]  # reads the old row...
        loader_started.set()
        row_read.wait(10)  # ...and returns after the update below
        return value

    reader, writer = make_cache(**BUS), make_cache(**BUS)
    result = []
    loading = threading.Thread(target=lambda: result.append(reader.get_or_load("k", slow_loader)))
    loading.start()
    assert loader_started.wait(10)
    database["k"] = "new row"  # the source of truth changes...
    writer.delete("k")  # ...and the cache entry is deleted
    row_read.set()
    loading.join(10)
    assert result == ["old row"]  # what the caller loaded is its own business...
    assert not writer.exists("k") and "k" not in reader.l1  # ...but it is not cached
    assert reader.stats()["leased_fills_refused"] == 1
    assert reader.get_or_load("k", database.get) == "new row"


def _stampede_worker(url, name, start_at, results):
    """One process: 50 threads ask for the same cold key at the same moment."""
    with TieredCache.from_url(url, name=name, **BUS) as cache:
        assert cache.wait_ready(10)
        counter = redis.Redis.from_url(url)

        def loader(key):
            counter.incr(f"{name}:loader-calls")
            time.sleep(0.3)
            return "value"

        values = []
        threads = [threading.Thread(target=lambda: values.append(cache.get_or_load("cold", loader))) for _ in range(50)]
        time.sleep(max(0.0, start_at - time.time()))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        counter.close()
        results.put((values.count("value"), cache.stats()["lease_timeouts"]))


def test_one_loader_call_for_a_cold_key_in_the_whole_fleet(redis_server, cache_name):
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start_at = time.time() + 2.0  # every process ready first, then all at once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        workers = [
            context.Process(target=_stampede_worker, args=(redis_server.url, cache_name, start_at, results))
            for _ in range(8)
        ]
        for worker in workers:
            worker.start()
    reports = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
    assert reports == [(50, 0)] * 8  # every thread got the value, none gave up waiting
    client = redis.Redis.from_url(redis_server.url)
    assert int(client.get(f"{cache_name}:loader-calls")) == 1
    client.close()


def _holds_the_lease_forever(url, name, holding):
    with TieredCache.from_url(url, name=name, lease_ttl=0.5, **BUS) as cache:

        def loader(key):
            holding.set()
            time.sleep(60)  # killed before it returns

        cache.get_or_load("k", loader)


def test_a_holder_that_dies_delays_the_others_by_lease_ttl_at_most(redis_server, cache_name):
    context = multiprocessing.get_context("fork")
    holding = context.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        holder = context.Process(target=_holds_the_lease_forever, args=(redis_server.url, cache_name, holding))
        holder.start()
    try:
        assert holding.wait(10)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
        with TieredCache.from_url(redis_server.url, name=cache_name, lease_ttl=0.5, **BUS) as cache:
            assert cache.wait_ready(10)
            assert cache.get_or_load("k", lambda key: "loaded here") == "loaded here"
            stats = cache.stats()
            assert stats["lease_waits"] == 1 and stats["lease_timeouts"] == 0  # the lease expired
            assert wait_until(lambda: cache.get("k") == "loaded here")
    finally:
        if holder.is_alive():
            holder.kill()


def test_a_waiter_loads_alone_past_lease_ttl_when_the_loader_asks_for_its_key_from_another_thread(make_cache):
    """The context variable that refuses recursion does not follow a loader into a thread
    pool: the inner call waits for the outer one, and must give up after lease_ttl."""
    from concurrent.futures import ThreadPoolExecutor

    cache = make_cache(lease_ttl=0.3)
    pool = ThreadPoolExecutor(1)
    calls = []

    def loader(key):
        calls.append(key)
        if len(calls) == 1:  # the outer load asks for its own key from another thread
            return pool.submit(cache.get_or_load, key, loader).result(timeout=10)
        return "inner"

    try:
        assert cache.get_or_load("self", loader) == "inner"
    finally:
        pool.shutdown()
    assert len(calls) == 2


def test_no_lease_token_looks_like_a_failure_mark():
    """A lease whose value starts with "!" is a failed load's mark (lease.FAILED), which a
    reader may take over; a live token must never look like one (seen: a second loader call
    in the fleet, one run in a few hundred)."""
    from tiercache.core.lease import Tokens

    assert not any(Tokens().next().startswith(b"!") for _ in range(2000))
