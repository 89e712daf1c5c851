"""Redis Cluster and Sentinel under faults, on real redis-server processes: a master that
dies with no replica fails only its own keys; a cluster failover and a Sentinel failover are
served through; the subscriber moves to another node; nothing stale is read afterwards."""

from __future__ import annotations

import threading
import time

import redis as redis_py

from tiercache import AsyncTieredCache, TieredCache
from tiercache.testing import RedisCluster, RedisSentinel

from ..conftest import wait_until

BUS = {"heartbeat": 0.2, "max_silence": 0.6}  # a dead subscriber's node is noticed within a second


def _master_of(cache, key, cluster):
    node = cache.redis.get_node_from_key(cache.redis_key(key))
    return next(server for server in cluster.masters if server.port == node.port)


def test_a_master_with_no_replica_that_dies_fails_only_its_own_keys():
    with RedisCluster(masters=3) as cluster, TieredCache.from_url(cluster.url, name="dead") as cache:
        assert cache.wait_ready(10)
        keys = [f"k{i}" for i in range(300)]
        assert cache.set_many({key: key for key in keys})
        victim = _master_of(cache, "k0", cluster)
        lost = {key for key in keys if _master_of(cache, key, cluster) is victim}
        assert 0 < len(lost) < 300
        victim.kill()
        cache.l1.clear()

        assert cache.get_many(keys) == {key: key for key in keys if key not in lost}  # the others still read
        kept = next(key for key in keys if key not in lost)
        for _ in range(5):  # enough failures to open the dead master's breaker
            assert cache.get("k0", "default") == "default"  # degraded, as for Redis down
        assert cache.get(kept) == kept and cache.set(kept, "new") and cache.get(kept) == "new"
        assert cache.set("k0", "x") is False
        stats = cache.stats()
        assert stats["breaker"] == "open" and stats["l2_errors"] >= 3
        assert cache._shared.breaker.state == "closed"  # the other masters' calls are not refused


def test_a_cluster_failover_is_served_through_and_nothing_stale_is_read():
    with (
        RedisCluster(masters=3, replicas=1) as cluster,
        TieredCache.from_url(cluster.url, name="fo") as writer,
        TieredCache.from_url(cluster.url, name="fo") as reader,
    ):
        assert writer.wait_ready(10) and reader.wait_ready(10)
        writer.set_many({f"k{i}": 0 for i in range(100)})
        assert reader.get("k0") == 0
        _master_of(writer, "k0", cluster).kill()

        def served():
            writer.l1.clear()
            return writer.get("k0") == 0

        assert wait_until(served, timeout=30)  # a replica took over its slots
        assert wait_until(lambda: writer.set("k0", 1), timeout=10)
        assert wait_until(lambda: reader.get("k0") == 1, timeout=10)  # the reader's copy went
        assert reader.get_many([f"k{i}" for i in range(100)]) == {"k0": 1, **{f"k{i}": 0 for i in range(1, 100)}}


def test_the_subscriber_moves_to_another_node_when_its_node_dies():
    with (
        RedisCluster(masters=3, replicas=1) as cluster,
        TieredCache.from_url(cluster.url, name="sub", **BUS) as writer,
        TieredCache.from_url(cluster.url, name="sub", **BUS) as reader,
    ):
        assert writer.wait_ready(10) and reader.wait_ready(10)
        port = reader._parts.subscriber._node_client.connection_pool.connection_kwargs["port"]
        node = next(server for server in cluster.nodes if server.port == port)
        reconnects = reader.stats()["reconnects"]
        node.kill()
        assert wait_until(lambda: reader.stats()["reconnects"] > reconnects, timeout=10)
        assert reader.wait_ready(30)  # subscribed again, on another node

        def invalidated():  # once writes work again (the node may have been a master)
            if not writer.set("k", time.monotonic()):
                return False
            value = reader.get("k")
            return value is not None and wait_until(lambda: reader.l1.peek("k") == value, timeout=1)

        assert wait_until(invalidated, timeout=30)
        writer.set("k", "last")
        assert wait_until(lambda: reader.l1.peek("k") is None or reader.l1.peek("k") == "last", timeout=5)
        assert reader.get("k") == "last"


def test_a_sentinel_failover_under_writes_empties_l1_counts_it_and_serves_again():
    with (
        RedisSentinel(replicas=1, sentinels=3) as group,
        TieredCache.from_url(group.url, name="sen", **BUS) as writer,
        TieredCache.from_url(group.url, name="sen", **BUS) as reader,
    ):
        assert writer.wait_ready(10) and reader.wait_ready(10)
        keys = [f"k{i}" for i in range(20)]
        stop, written = threading.Event(), [0]

        def write_load():
            while not stop.is_set():
                written[0] += 1
                writer.set(keys[written[0] % len(keys)], written[0])
                time.sleep(0.002)

        load = threading.Thread(target=write_load)
        load.start()
        try:
            time.sleep(0.2)
            for key in keys:
                reader.get(key)
            old_master = group.master.port
            group.master.kill()
            assert wait_until(lambda: reader.stats()["failovers"] == 1, timeout=30)
            assert wait_until(lambda: writer.stats()["failovers"] == 1, timeout=30)
            assert reader.wait_ready(10)
            before = written[0]
            assert wait_until(lambda: written[0] > before + 20, timeout=10)  # writes go on
        finally:
            stop.set()
            load.join(10)
        flushes = reader.stats()["l1_flushes"]
        assert flushes["disconnect"] + flushes["silence"] >= 1  # L1 was emptied
        master = redis_py.Redis(port=group.replicas[0].port)
        assert master.info("replication")["role"] == "master" and group.replicas[0].port != old_master
        # Nothing stale: what each process reads is what the new master holds.
        for key in keys:
            stored = master.get(writer.redis_key(key))
            assert (reader.get(key) is None) == (stored is None)
            assert reader.get(key) == writer.get(key)
        master.close()


async def test_the_asyncio_cache_on_a_cluster_with_a_dead_master():
    # Also: closing the cache closes every connection, though redis.asyncio's cluster client,
    # told of a dead node, waits to learn the cluster again and its own aclose() does nothing.
    with RedisCluster(masters=3) as cluster:
        async with AsyncTieredCache.from_url(cluster.url, name="adead") as cache:
            assert await cache.wait_ready(10)
            keys = [f"k{i}" for i in range(100)]
            await cache.set_many({key: key for key in keys})
            victim = _master_of(cache, "k0", cluster)
            lost = {key for key in keys if _master_of(cache, key, cluster) is victim}
            victim.kill()
            cache.l1.clear()
            assert await cache.get_many(keys) == {key: key for key in keys if key not in lost}
            assert await cache.get("k0", "default") == "default"
