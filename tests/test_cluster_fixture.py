"""tiercache.testing.RedisCluster and RedisSentinel: the real Redis Cluster and Sentinel
groups that issue 15's tests run on (formed directly, their nodes killable one by one)."""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster as ClusterClient

from tiercache.testing import RedisCluster, RedisSentinel

from .conftest import wait_until


def test_a_cluster_of_three_masters_serves_every_slot():
    with RedisCluster(masters=3) as cluster:
        client = ClusterClient.from_url(cluster.masters[0].url)
        try:
            client.mset_nonatomic({f"k{i}": i for i in range(300)})
            assert client.mget_nonatomic([f"k{i}" for i in range(300)]) == [b"%d" % i for i in range(300)]
            assert len(client.get_primaries()) == 3
            sizes = [redis.Redis(port=node.port).dbsize() for node in cluster.masters]
            assert all(size > 50 for size in sizes) and sum(sizes) == 300  # spread over the masters
        finally:
            client.close()
    assert not any(node.ping() for node in cluster.nodes)  # nothing left running


def test_a_replica_takes_over_when_its_master_dies():
    with RedisCluster(masters=3, replicas=1) as cluster:
        replica = cluster.replicas[0][0]
        watcher = redis.Redis(port=replica.port)
        assert watcher.info("replication")["role"] == "slave"
        cluster.masters[0].kill()
        assert wait_until(lambda: watcher.info("replication")["role"] == "master", timeout=20)
        assert wait_until(lambda: b"cluster_state:ok" in watcher.execute_command("CLUSTER", "INFO"), timeout=20)
        watcher.close()


def test_sentinels_fail_over_to_the_replica():
    from redis.sentinel import Sentinel

    with RedisSentinel(replicas=1, sentinels=3) as group:
        sentinel = Sentinel(group.sentinel_addresses, socket_timeout=1)
        assert sentinel.discover_master(group.service) == ("127.0.0.1", group.master.port)
        assert group.url.startswith("redis+sentinel://127.0.0.1:") and group.url.endswith(f"/{group.service}/0")
        group.master.kill()
        replica = ("127.0.0.1", group.replicas[0].port)

        def promoted():
            try:
                return sentinel.discover_master(group.service) == replica
            except redis.RedisError:
                return False

        assert wait_until(promoted, timeout=20)
        master = sentinel.master_for(group.service, socket_timeout=1)
        assert master.set("k", "after failover") and master.get("k") == b"after failover"
        master.close()
