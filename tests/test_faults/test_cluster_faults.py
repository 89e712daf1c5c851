"""Redis Cluster and Sentinel under faults, on real redis-server processes: a master that
dies with no replica fails only its own keys; a cluster failover and a Sentinel failover are
served through; the subscriber moves to another node; nothing stale is read afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest
import redis as redis_py

from tiercache import AsyncTieredCache, CacheUnavailable, TieredCache
from tiercache.codec import key_slot
from tiercache.testing import RedisCluster, RedisSentinel

from ..conftest import wait_until

BUS = {"heartbeat": 0.2, "max_silence": 0.6}  # a dead subscriber's node is noticed within a second


@contextlib.contextmanager
def _writer_and_reader(url, name, **options):
    """Two caches of one name on url (two processes' worth), both subscribed."""
    with (
        TieredCache.from_url(url, name=name, **options) as writer,
        TieredCache.from_url(url, name=name, **options) as reader,
    ):
        assert writer.wait_ready(10) and reader.wait_ready(10)
        yield writer, reader


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
        for _ in range(3):
            with pytest.raises(CacheUnavailable):
                cache.append("k0", "x")
        stats = cache.stats()
        assert stats["breaker"] == "open" and stats["l2_errors"] >= 3
        assert cache._shared.breaker.state == "closed"  # the other masters' calls are not refused
        # Updates (WATCH/MULTI) answer to their own master's breaker too.
        assert cache.append(f"{kept}:log", "a") == 1 and cache.set_field(f"{kept}:h", "f", 1)
        with pytest.raises(CacheUnavailable):
            list(cache.keys())  # a listing that cannot reach every master says so


def test_an_incr_that_meets_a_stalled_master_is_never_applied_twice():
    with RedisCluster(masters=3) as cluster, TieredCache.from_url(cluster.url, name="once") as cache:
        assert cache.wait_ready(10)
        master = _master_of(cache, "n", cluster)
        raw = redis_py.Redis(port=master.port)
        for _ in range(3):
            raw.delete(cache.redis_key("n"))
            master.pause()
            threading.Timer(0.7, master.resume).start()  # longer than the socket timeout (0.5 s)
            try:
                cache.incr("n", 1)
            except CacheUnavailable:
                pass  # its outcome is unknown: it may or may not have been applied, once
            assert wait_until(lambda: master.ping(), timeout=5)
            time.sleep(0.3)
            assert raw.get(cache.redis_key("n")) in (None, b"1")
            for breaker in (cache._shared.breaker, *cache._shared.node_breakers.values()):
                breaker.success()
        raw.close()


async def test_a_cancelled_write_on_a_cluster_is_still_announced():
    with RedisCluster(masters=3) as cluster:
        reader = TieredCache.from_url(cluster.url, name="cancel", l1_ttl=60)
        try:
            async with AsyncTieredCache.from_url(cluster.url, name="cancel") as writer:
                assert reader.wait_ready(10) and await writer.wait_ready(10)
                stalled = cluster.masters[1]
                key = next(f"k{i}" for i in range(200) if _master_of(writer, f"k{i}", cluster) is stalled)
                other = next(f"k{i}" for i in range(200) if _master_of(writer, f"k{i}", cluster) is not stalled)
                await writer.set_many({key: "old", other: "old"})
                assert wait_until(lambda: reader.get(key) == "old" and reader.l1.peek(key) == "old")
                stalled.pause()
                try:
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(writer.set_many({key: "new", other: "new"}), 0.2)
                finally:
                    stalled.resume()
                # The write went on after its caller was cancelled; so did its invalidation.
                for _ in range(500):
                    if reader.get(key) == "new":
                        break
                    await asyncio.sleep(0.01)
                assert reader.get(key) == "new" and reader.get(other) == "new"
        finally:
            reader.close()


def test_a_cluster_failover_is_served_through_and_nothing_stale_is_read():
    with RedisCluster(masters=3, replicas=1) as cluster, _writer_and_reader(cluster.url, "fo") as (writer, reader):
        writer.set_many({f"k{i}": 0 for i in range(100)})
        assert reader.get("k0") == 0
        _master_of(writer, "k0", cluster).kill()
        # Writes alone (and batch reads alone) must find the replica that took over: the
        # client's map of slots is asked for again after a master fails, not only by a get.
        assert wait_until(lambda: writer.set("k0", 1), timeout=30)
        keys = [f"k{i}" for i in range(100)]
        assert wait_until(lambda: reader.get_many(keys) == {"k0": 1, **{f"k{i}": 0 for i in range(1, 100)}}, timeout=30)
        assert wait_until(lambda: reader.get("k0") == 1, timeout=10)  # the reader's copy went
        # The old master's breaker is forgotten, not reported open forever.
        assert wait_until(lambda: writer.set("k1", 1) and writer.stats()["breaker"] == "closed", timeout=10)


def test_the_subscriber_moves_to_another_node_when_its_node_dies():
    with (
        RedisCluster(masters=3, replicas=1) as cluster,
        _writer_and_reader(cluster.url, "sub", **BUS) as (writer, reader),
    ):
        port = reader._parts.subscriber._node_client.connection_pool.connection_kwargs["port"]
        node = next(server for server in cluster.nodes if server.port == port)
        reconnects = reader.stats()["reconnects"]
        node.kill()
        # At once, not after a client's own retries: the other masters take writes it
        # would not hear of.
        assert wait_until(lambda: not reader.l1_enabled, timeout=1.5)
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
        _writer_and_reader(group.url, "sen", **BUS) as (writer, reader),
    ):
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


def test_get_many_reads_a_slot_in_the_middle_of_a_migration():
    with RedisCluster(masters=3) as cluster, TieredCache.from_url(cluster.url, name="moving") as cache:
        assert cache.wait_ready(10)
        keys = [f"{{t{i % 30}}}:{i}" for i in range(300)]  # ten keys in each of 30 slots
        cache.set_many({key: key for key in keys})
        source = _master_of(cache, keys[0], cluster)
        target = next(server for server in cluster.masters if server is not source)
        slot = key_slot(cache.redis_key(keys[0]))
        src, dst = redis_py.Redis(port=source.port), redis_py.Redis(port=target.port)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.execute_command("CLUSTER", "MYID"))
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.execute_command("CLUSTER", "MYID"))
        moved = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 3)
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moved)
        cache.l1.clear()
        # The half-moved slot's MGET gets TRYAGAIN: its keys are read one by one (ASK), and
        # no other key is lost with them.
        assert cache.get_many(keys) == {key: key for key in keys}
        assert cache.stats()["l2_errors"] == 0
        src.close()
        dst.close()
