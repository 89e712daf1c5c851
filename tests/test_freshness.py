"""Early refresh, stale-while-revalidate, stale-if-error (core/freshness.py), against a real
redis-server. No timing is asserted: who called the loader, from which thread, and what each
read returned while a loader was held back, are."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tiercache import AsyncTieredCache
from tiercache.codec import freshness
from tiercache.core import plans

from .conftest import wait_until


class Source:
    """A source of truth whose loads can be held back or made to fail; it records which
    thread each load ran in."""

    def __init__(self) -> None:
        self.version = 0
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.failing = False

    def load(self, key):
        self.threads.append(threading.current_thread().name)
        self.gate.wait(10)
        if self.failing:
            raise ConnectionError("the database is down")
        self.version += 1
        return f"{key}:v{self.version}"


def past_its_ttl(cache, source):
    """Load k (TTL 0.1 s) and wait until it is past its TTL (Redis keeps it for the window)."""
    cache.get_or_load("k", source.load, ttl=0.1)
    time.sleep(0.15)


def failing_past_its_ttl(make_cache, **options):
    """A cache (options) holding k past its TTL, and its source, failing from now on."""
    cache, source = make_cache(**options), Source()
    past_its_ttl(cache, source)
    source.failing = True
    return cache, source


def test_stale_while_revalidate_answers_at_once_and_refreshes_in_the_background(make_cache):
    cache, source = make_cache(stale_while_revalidate=30), Source()
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"
    time.sleep(0.15)  # past the TTL, within the window
    cache.l1.clear()
    source.gate.clear()  # the refresh's loader is held back...
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"  # ...and the read has its answer
    assert cache.stats()["stale_served_revalidating"] == 1
    assert wait_until(lambda: len(source.threads) == 2)
    assert source.threads[1] == "tiercache-refresh"  # not the reader's thread
    source.gate.set()
    assert wait_until(lambda: cache.get_or_load("k", source.load, ttl=0.1) == "k:v2")
    assert source.version == 2  # one refresh, not one per read


def test_stale_if_error_serves_the_old_value_inside_the_window_and_the_error_after(make_cache):
    cache, source = make_cache(stale_if_error=0.4), Source()
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"
    time.sleep(0.15)
    cache.l1.clear()
    source.failing = True
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"  # the loader raised: the old value
    assert cache.stats()["stale_served_error"] == 1 and cache.stats()["load_errors"] == 1
    time.sleep(0.45)  # past TTL + window: Redis let it go
    with pytest.raises(ConnectionError):
        cache.get_or_load("k", source.load, ttl=0.1)
    source.failing = False
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v2"


def test_a_value_past_its_ttl_is_gone_for_every_other_read(make_cache, raw_redis):
    cache = make_cache(stale_while_revalidate=30)
    cache.set("k", {"a": 1}, ttl=0.1)
    cache.set_many({"m": 1}, ttl=0.1)
    rkey = cache.redis_key("k")
    assert freshness(raw_redis.get(rkey)) is not None  # the extended header
    assert 29_000 < raw_redis.pttl(rkey) <= 30_100  # Redis keeps it for the window
    assert 0 < cache.ttl("k") <= 0.1 and cache.exists("k")
    time.sleep(0.15)
    cache.l1.clear()
    assert raw_redis.exists(rkey)
    assert cache.get("k") is None and cache.get_many(["k", "m"]) == {}
    assert not cache.exists("k") and cache.ttl("k") is None
    assert cache.set_field("k", "b", 2) and cache.get("k") == {"b": 2}  # a new value, not the stale one
    assert freshness(raw_redis.get(rkey)) is not None  # and it keeps the extended header


def test_expire_keeps_the_window_and_values_without_one_are_unchanged(make_cache, raw_redis):
    windowed, plain = make_cache(stale_if_error=20), make_cache(name="plain" + str(time.time_ns()))
    windowed.set("k", 1.5)
    assert windowed.expire("k", 5)
    assert 24_000 < raw_redis.pttl(windowed.redis_key("k")) <= 25_050 and 4 < windowed.ttl("k") <= 5  # (ms rounding)
    plain.set("k", 1.5, ttl=5)
    assert freshness(raw_redis.get(plain.redis_key("k"))) is None  # nothing changes without the options
    assert raw_redis.pttl(plain.redis_key("k")) <= 5_000
    windowed.set("n", 7)  # a plain integer has no header: no window either (nothing would enforce it)
    assert raw_redis.pttl(windowed.redis_key("n")) <= 300_000


def test_early_refresh_keeps_hot_readers_off_the_loader(make_cache):
    """4 threads read a key with a 0.5 s TTL and a slow loader for 2.5 s: after the first
    load, every load runs in a background refresh, about once per TTL."""
    # beta 2: a wider margin before the expiry, so a loaded machine's late thread still lands in time
    cache, source = make_cache(early_refresh=2.0), Source()
    loaded = threading.Event()

    def slow_load(key):
        time.sleep(0.08)
        return source.load(key)

    stop = time.monotonic() + 2.5
    seen: list[str] = []

    def reader():
        while time.monotonic() < stop:
            seen.append(cache.get_or_load("hot", slow_load, ttl=0.5))
            loaded.set()
            time.sleep(0.002)

    threads = [threading.Thread(target=reader, name=f"reader-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loaded.is_set()
    assert source.threads[0].startswith("reader-")  # the first load: nothing to serve yet
    assert all(name == "tiercache-refresh" for name in source.threads[1:]), source.threads
    assert 3 <= len(source.threads) <= 10  # about once per TTL, not once per reader
    # (a refresh that began as the readers stopped may still be on its way)
    assert wait_until(lambda: cache.stats()["early_refreshes"] == len(source.threads) - 1)
    assert cache.stats()["lease_waits"] == 0  # no reader ever waited for a load to land
    assert len(set(seen)) >= len(source.threads) - 1  # every refreshed value was read (but that last one)


def test_a_write_during_a_refresh_wins(make_cache):
    cache, source = make_cache(stale_while_revalidate=30), Source()
    past_its_ttl(cache, source)
    cache.l1.clear()
    source.gate.clear()
    assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"  # stale; the refresh waits on the gate
    assert wait_until(lambda: len(source.threads) == 2)
    cache.set("k", "written")  # revokes the refresh's lease
    source.gate.set()
    assert wait_until(lambda: cache.stats()["leased_fills_refused"] == 1)
    cache.l1.clear()
    assert cache.get("k") == "written"


def test_bad_settings_raise_naming_them(make_cache, redis_server, cache_name):
    from tiercache import TieredCache

    for options, match in (
        ({"early_refresh": "yes"}, "early_refresh"),
        ({"early_refresh": -1}, "early_refresh"),
        ({"stale_while_revalidate": -1}, "stale window"),
        ({"stale_if_error": float("inf")}, "finite"),
        ({"stale_if_error": 5, "lease": False}, "lease"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            TieredCache.from_url(redis_server.url, name=cache_name, **options)
    cache = make_cache(lease=False)
    with pytest.raises(ValueError, match="lease"):
        cache.get_or_load("k", str, stale_while_revalidate=5)


def test_the_decorator_takes_the_settings_per_function(make_cache):
    cache, source = make_cache(), Source()

    @cache.cached(ttl=0.1, key="d:{x}", stale_while_revalidate=30)
    def fetch(x):
        return source.load(x)

    assert fetch(1) == "1:v1"
    time.sleep(0.15)
    cache.l1.clear()
    assert fetch(1) == "1:v1"  # stale, refreshed behind
    assert wait_until(lambda: source.version == 2)


async def test_async_stale_while_revalidate_and_stale_if_error(redis_server, cache_name):
    async with AsyncTieredCache.from_url(
        redis_server.url, name=cache_name, stale_while_revalidate=0.3, stale_if_error=30
    ) as cache:
        calls = []
        release = asyncio.Event()

        async def load(key):
            calls.append(key)
            if len(calls) == 2:
                await release.wait()
            if len(calls) == 3:
                raise ConnectionError("down")
            return f"v{len(calls)}"

        assert await cache.get_or_load("k", load, ttl=0.1) == "v1"
        await asyncio.sleep(0.15)
        cache.l1.clear()
        assert await cache.get_or_load("k", load, ttl=0.1) == "v1"  # stale at once; the refresh waits
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(calls) == 2
        release.set()
        for _ in range(200):
            cache.l1.clear()
            if await cache.get_or_load("k", load, ttl=0.1) == "v2":
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the background refresh never landed")
        await asyncio.sleep(0.5)  # past TTL + the revalidate window, inside the error window
        cache.l1.clear()
        assert await cache.get_or_load("k", load, ttl=0.1) == "v2"  # the loader raised: stale
        assert cache.stats()["stale_served_error"] == 1


# -- found by review ------------------------------------------------------------------------------


def test_expire_does_not_bring_back_a_value_past_its_ttl_and_keeps_its_own_window(make_cache, raw_redis):
    cache = make_cache(stale_while_revalidate=30)
    cache.set("k", "old", ttl=0.1)
    time.sleep(0.15)
    assert cache.expire("k", 60) is False and cache.get("k") is None and cache.ttl("k") is None
    plain = make_cache(name=cache.name + "p")  # no windows of its own
    assert plain.get_or_load("w", lambda key: "v", ttl=0.2, stale_if_error=60) == "v"
    assert plain.expire("w", 0.2)
    assert raw_redis.pttl(plain.redis_key("w")) > 59_000  # the value's window, not the cache's (none)


def test_a_refresh_never_overwrites_a_write_from_a_cache_without_leases(make_cache, cache_name):
    cache, source = make_cache(stale_while_revalidate=30), Source()
    leaseless = make_cache(name=cache_name, lease=False)
    for write in (lambda: leaseless.set("k", "written"), lambda: leaseless.delete("k")):
        cache.get_or_load("k", source.load, ttl=0.1)
        time.sleep(0.15)
        cache.l1.clear()
        source.gate.clear()
        refreshes = len(source.threads) + 1
        assert cache.get_or_load("k", source.load, ttl=0.1) != "written"  # stale; its refresh waits
        assert wait_until(lambda: len(source.threads) == refreshes)
        write()  # revokes no lease
        source.gate.set()
        time.sleep(0.2)
        cache.l1.clear()
        assert cache.get("k") in ("written", None) and cache.get("k") == leaseless.get("k")
        cache.delete("k")


def test_a_refresh_that_finds_nothing_deletes_the_stale_value(make_cache, raw_redis):
    cache = make_cache(stale_while_revalidate=30)
    answers = iter(["item", None, None, None])
    assert cache.get_or_load("k", lambda key: next(answers), ttl=0.1) == "item"
    time.sleep(0.15)
    cache.l1.clear()
    assert cache.get_or_load("k", lambda key: next(answers), ttl=0.1) == "item"  # stale; refreshed behind
    assert wait_until(lambda: not raw_redis.exists(cache.redis_key("k")))
    assert cache.get_or_load("k", lambda key: next(answers), ttl=0.1) is None


def test_a_failing_source_is_asked_once_per_backoff_not_once_per_read(make_cache):
    cache, source = failing_past_its_ttl(make_cache, stale_if_error=30)
    for _ in range(30):
        cache.l1.clear()
        assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"
    assert len(source.threads) == 2  # the first load and one failed reload: the rest waited out the backoff
    assert cache.stats()["stale_served_error"] == 30


def test_close_lets_a_refresh_go_and_nothing_reaches_redis_after_it(make_cache, redis_server, cache_name, raw_redis):
    from tiercache import TieredCache

    cache, source = TieredCache.from_url(redis_server.url, name=cache_name, stale_while_revalidate=30), Source()
    past_its_ttl(cache, source)
    cache.l1.clear()
    source.gate.clear()
    before = raw_redis.get(cache.redis_key("k"))
    cache.get_or_load("k", source.load, ttl=0.1)  # stale; the refresh waits on the gate
    cache.close()  # waits 1 s for it, then goes on
    source.gate.set()
    time.sleep(0.2)
    assert raw_redis.get(cache.redis_key("k")) == before  # the refresh that outlived close() wrote nothing


async def test_async_close_gives_a_cancelled_refreshs_lease_back(redis_server, cache_name, raw_redis):
    cache = AsyncTieredCache.from_url(redis_server.url, name=cache_name, stale_while_revalidate=30)
    never = asyncio.Event()

    async def load(key):
        if await cache.exists("loaded-once"):
            await never.wait()
        await cache.set("loaded-once", 1)
        return "v1"

    assert await cache.get_or_load("k", load, ttl=0.1) == "v1"
    await asyncio.sleep(0.15)
    cache.l1.clear()
    assert await cache.get_or_load("k", load, ttl=0.1) == "v1"  # stale; the refresh never ends
    lease_key = cache._keys.lease_key(cache.redis_key("k"))
    assert raw_redis.exists(lease_key)
    await cache.close()
    assert not raw_redis.exists(lease_key)  # given back, not left to expire after lease_ttl


def test_get_many_keeps_l1_copies_short_of_the_refresh_margin(make_cache, cache_name):
    loader_cache = make_cache(early_refresh=True)

    def slow(key):
        time.sleep(0.1)
        return "v"

    loader_cache.get_or_load("k", slow, ttl=5)
    reader = make_cache(name=cache_name)
    assert reader.get_many(["k"]) == {"k": "v"}
    assert reader.l1.ttl("k") < reader.ttl("k") - 0.09  # at least the load's duration before the expiry


def test_a_process_without_leases_replaces_a_stale_value_instead_of_loading_every_read(make_cache, cache_name):
    windowed = make_cache(stale_if_error=300)
    windowed.get_or_load("k", lambda key: "old", ttl=0.1)
    time.sleep(0.15)
    leaseless, calls = make_cache(name=cache_name, lease=False), []

    def load(key):
        calls.append(key)
        return "new"

    for _ in range(10):
        leaseless.l1.clear()
        assert leaseless.get_or_load("k", load, ttl=60) == "new"
    assert calls == ["k"]  # stored over the stale value, then read back


def test_a_failed_early_refresh_holds_off_refreshes_but_no_reader(make_cache, raw_redis):
    cache, source = make_cache(early_refresh=True), Source()
    cache.get_or_load("k", source.load, ttl=0.3)
    source.failing = True
    job = plans.Loading(
        "k",
        "k",
        cache.redis_key("k"),
        source.load,
        300,
        None,
        None,
        (),
        cache._shared.freshness,
        replaces=raw_redis.get(cache.redis_key("k")),
    )
    cache._run(plans.refresh(cache._scope, job, None))  # an early refresh whose loader fails
    assert cache.stats()["refresh_failures"] == 1
    lease_key = cache._keys.lease_key(cache.redis_key("k"))
    assert raw_redis.get(lease_key).startswith(b"!")  # the next refresh waits a second
    source.failing = False
    time.sleep(0.35)  # the value has expired (no window: nothing stale left)
    cache.l1.clear()
    assert cache.get_or_load("k", source.load, ttl=0.3) == "k:v2"
    assert cache.stats()["lease_waits"] == 0  # the mark held off no reader


def test_a_waiter_that_saw_a_stale_value_stores_its_load_once_the_key_is_gone(make_cache, raw_redis):
    cache = make_cache(stale_if_error=30)
    cache.get_or_load("k", lambda key: "old", ttl=0.1)
    time.sleep(0.15)
    cache.l1.clear()
    lease_key = cache._keys.lease_key(cache.redis_key("k"))
    raw_redis.set(lease_key, b"another process", px=300)  # someone else is loading it
    result = []
    waiter = threading.Thread(target=lambda: result.append(cache.get_or_load("k", lambda key: "new", ttl=60)))
    waiter.start()
    time.sleep(0.05)  # it waits, having seen the stale value
    raw_redis.delete(cache.redis_key("k"), lease_key)  # the other process deleted the key
    waiter.join(10)
    assert result == ["new"]
    cache.l1.clear()
    assert cache.get("k") == "new"  # stored: the stale value it saw was no longer what it replaced


def test_a_field_update_keeps_the_l1_copy_short_of_the_refresh_margin(make_cache):
    cache = make_cache(early_refresh=True)

    def slow(key):
        time.sleep(0.1)
        return {"a": 1}

    cache.get_or_load("k", slow, ttl=5)
    assert cache.set_field("k", "b", 2)
    assert cache.l1.ttl("k") < cache.ttl("k") - 0.09


# -- found by the third review -------------------------------------------------------------------


def test_a_load_without_lease_on_a_server_that_refuses_scripts_is_stored_with_set_nx(own_redis):
    import redis

    from tiercache import TieredCache

    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-@scripting"]
    )
    url = own_redis.url.replace("redis://", "redis://app:pw@")
    calls = []
    with TieredCache.from_url(url, name="t", lease=False, invalidation=None) as cache:
        for _ in range(3):
            cache.l1.clear()
            assert cache.get_or_load("k", lambda key: calls.append(key) or "v", ttl=60) == "v"
    assert calls == ["k"] and admin.exists(b"tc:t:k")  # stored once, then read
    admin.close()


def test_a_failing_refresh_is_backed_off_with_stale_while_revalidate_alone(make_cache):
    cache, source = failing_past_its_ttl(make_cache, stale_while_revalidate=30)
    for _ in range(30):
        cache.l1.clear()
        assert cache.get_or_load("k", source.load, ttl=0.1) == "k:v1"
        time.sleep(0.005)
    assert wait_until(lambda: cache.stats()["refresh_failures"] >= 1)
    assert len(source.threads) <= 2  # the first load, one failed refresh: the rest waited out the backoff


def test_a_reader_that_cannot_serve_stale_takes_over_a_failure_mark(make_cache, cache_name):
    patient = make_cache(stale_if_error=30)
    patient.get_or_load("k", lambda key: "old", ttl=0.1)
    time.sleep(0.15)
    patient.l1.clear()

    def failing(key):
        raise ConnectionError("down")

    assert patient.get_or_load("k", failing, ttl=0.1) == "old"  # the mark is set
    plain = make_cache(name=cache_name)  # no windows: it cannot serve the stale value
    assert plain.get_or_load("k", lambda key: "new", ttl=60) == "new"
    assert plain.stats()["lease_waits"] == 0  # it did not wait the mark out


def test_a_load_without_lease_never_overwrites_a_fresh_write_whatever_its_clock(make_cache, cache_name, monkeypatch):
    from tiercache.core import plans as plan_module

    writer = make_cache(stale_if_error=30)
    writer.set("k", "written", ttl=1)
    real = time.time
    monkeypatch.setattr(plan_module.time, "time", lambda: real() + 2)  # this process's clock runs 2 s ahead
    leaseless = make_cache(name=cache_name, lease=False)
    assert leaseless.get_or_load("k", lambda key: "older", ttl=60) == "older"  # stale by its clock...
    monkeypatch.undo()
    writer.l1.clear()
    assert writer.get("k") == "written"  # ...but not by Redis's: the write stays
