"""Fixtures shared by the suite: both L1 implementations and a clock the tests can move."""

from __future__ import annotations

import pytest

from tiercache import _local_py
from tiercache.local import NO_EXTENSIONS

IMPLEMENTATIONS = [pytest.param(_local_py.LocalCache, id="py")]
if not NO_EXTENSIONS:
    # Imported unguarded: a missing build must fail the run, not skip the compiled half.
    from tiercache import _local_c

    IMPLEMENTATIONS.insert(0, pytest.param(_local_c.LocalCache, id="c"))


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The LocalCache class under test: compiled ("c") and pure ("py")."""
    return request.param


@pytest.fixture(params=[p for p in IMPLEMENTATIONS if p.id == "c"])
def compiled_impl(request):
    """The compiled LocalCache only, for guarantees the pure twin does not make."""
    return request.param


class FakeTimer:
    """A clock that only moves when told to (seconds, like time.monotonic)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


def wait_until(predicate, timeout: float = 10.0, step: float = 0.005) -> bool:
    """Poll predicate until it holds (True) or timeout seconds pass (False); tests that
    wait on another thread, process or server use this instead of a fixed sleep."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# -- Redis ---------------------------------------------------------------------------------

import itertools  # noqa: E402

import redis as redis_py  # noqa: E402

from tiercache.testing import RedisServer  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session, on a free loopback port (never the system one)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def own_redis():
    """A redis-server for this test alone, so it may kill, pause or restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def raw_redis(redis_server):
    """A plain redis-py client on the session server, to look behind the cache's back."""
    client = redis_py.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def cache_name():
    """A name no other test uses, so tests sharing the server never see each other's keys."""
    return f"test{next(_names)}"


@pytest.fixture
def make_cache(redis_server, cache_name):
    """Build TieredCaches on the session server; all are closed after the test."""
    from tiercache import TieredCache

    made = []

    def make(url=None, **options):
        options.setdefault("name", cache_name)
        cache = TieredCache.from_url(url or redis_server.url, **options)
        made.append(cache)
        assert cache.wait_ready(10), "the invalidation subscription was not confirmed"
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache):
    return make_cache()
