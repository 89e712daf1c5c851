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


def heard_everything(writer, reader, timeout: float = 10.0) -> bool:
    """Wait until reader has received every invalidation writer sent. A read that one of
    them overtakes keeps nothing in L1 (the fill guard), so a test that needs the reader's
    L1 filled waits for this first (on a cluster, or a busy machine, messages lag)."""
    sent = writer.stats()["invalidations_sent"]
    return wait_until(lambda: reader.stats()["invalidations_received"] >= sent, timeout)


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


# -- the kinds of L2 (issue 15) ------------------------------------------------------------
#
# Fixtures that make caches (make_cache, cache, make_acache, acache) and raw_redis run on the
# L2 named by the fixture l2_kind: "redis" (the session server) unless a module overrides it
# with L2_KINDS, so its contract tests run on one Redis, Redis Cluster and Sentinel alike; a
# test that is about one Redis only pins it with @pytest.mark.parametrize("l2_kind", ["redis"]).

L2_KINDS = ["redis", "cluster", "sentinel"]


@pytest.fixture(scope="session")
def redis_cluster():
    """Three masters (no replicas) for the session; tests that kill nodes make their own."""
    from tiercache.testing import RedisCluster

    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel():
    """A master, a replica and three sentinels for the session."""
    from tiercache.testing import RedisSentinel

    with RedisSentinel(replicas=1, sentinels=3) as group:
        yield group


@pytest.fixture
def l2_kind():
    return "redis"


@pytest.fixture
def l2_url(request, l2_kind):
    """The URL of the L2 under test (l2_kind)."""
    if l2_kind == "cluster":
        return request.getfixturevalue("redis_cluster").url
    if l2_kind == "sentinel":
        return request.getfixturevalue("redis_sentinel").url
    return request.getfixturevalue("redis_server").url


def raw_client(url):
    """A plain redis-py client (a cluster client on a cluster, the master's behind Sentinel)."""
    from tiercache import clients

    kind = clients.kind_of_url(url)
    if kind == "cluster":
        return clients.cluster_client(url, {})
    if kind == "sentinel":
        return clients.sentinel_client(url, {})
    return redis_py.Redis.from_url(url)


@pytest.fixture
def raw_redis(l2_url):
    """A plain redis-py client on the L2 under test, to look behind the cache's back."""
    client = raw_client(l2_url)
    yield client
    client.close()


@pytest.fixture
def cache_name():
    """A name no other test uses, so tests sharing the server never see each other's keys."""
    return f"test{next(_names)}"


@pytest.fixture
def make_cache(l2_url, cache_name):
    """Build TieredCaches on the L2 under test; all are closed after the test."""
    from tiercache import TieredCache

    made = []

    def make(url=None, **options):
        options.setdefault("name", cache_name)
        cache = TieredCache.from_url(url or l2_url, **options)
        made.append(cache)
        assert cache.wait_ready(10), "the invalidation subscription was not confirmed"
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def cache(make_cache):
    return make_cache()
