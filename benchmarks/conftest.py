"""Shared set-up for the L1 benchmarks: the keys, the peers, and the loop every case runs.

Each benchmark round calls one cache operation once per key over OPS keys; `report.py`
divides by OPS and subtracts the group's `floor` case (the same loop with no call) to
get nanoseconds per call, then takes ratios against the peers measured in the same run.
"""

from __future__ import annotations

import time

import pytest

# Groups that never wait on I/O are timed in process CPU time: on a shared 2-core machine,
# wall time also counts the moments another process had our core. Redis groups keep the
# wall clock, since waiting for Redis is what they measure.
CPU_TIMER = pytest.mark.benchmark(timer=time.process_time)

OPS = 10_000
TTL = 300.0
KEYS = [f"key:{i}" for i in range(OPS)]
VALUE = {"id": 42, "name": "Ada Lovelace", "tags": ["admin", "ops"], "score": 9.5}
OTHER_KEYS = [f"other:{i}" for i in range(OPS)]


def loop_of(call):
    """A function that applies call to every key; None gives the floor (the bare loop)."""
    keys = KEYS
    if call is None:

        def run():
            for key in keys:
                pass

    else:

        def run():
            for key in keys:
                call(key)

    return run


from tiercache.testing import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server():
    """A redis-server of the benchmark session's own, on a free loopback port."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def tiered(redis_server):
    """A TieredCache holding VALUE under every key of KEYS, in Redis and in L1."""
    from tiercache import TieredCache

    cache = TieredCache.from_url(redis_server.url, name="bench", l1_maxsize=2 * OPS, l1_ttl=3600, default_ttl=3600)
    assert cache.wait_ready()
    cache.set_many(dict.fromkeys(KEYS, VALUE))
    yield cache
    cache.close()
