"""Redis Cluster and Sentinel figures (issue 15), each against one Redis in the same run.

    python -m benchmarks.cluster [--rounds 30] [--lag-rounds 300] [--failovers 3]

* get_many(1,000) from Redis (L1 emptied before each call): a 3-master cluster, whose keys
  spread over ~1,000 slots on three nodes, against one Redis. Medians of rounds.
* Invalidation lag, two processes (benchmarks/invalidation_lag.py): on one Redis, and on the
  cluster, where the message crosses the cluster bus from the writer's node to the
  subscriber's.
* Raw pub/sub lag on the cluster, publisher and subscriber on different connections: classic
  PUBLISH (broadcast over the cluster bus to every node; the subscriber on another node than
  the publisher) against sharded SPUBLISH (delivered by the shard that owns the channel's
  slot; the subscriber on that shard).
* Failover: from a master's death to the first get() served from Redis again (L1 emptied
  before each try), for a cluster master with a replica and for a Sentinel master.

Every server is started here on free loopback ports and stopped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import redis

from tiercache import TieredCache
from tiercache.testing import RedisCluster, RedisSentinel, RedisServer

from . import invalidation_lag


def get_many_medians(urls: dict[str, str], keys: int, rounds: int) -> dict[str, float]:
    """Median seconds of get_many(keys) from Redis, per URL, measured round-robin."""
    caches = {label: TieredCache.from_url(url, name=f"gm{time.monotonic_ns()}") for label, url in urls.items()}
    names = [f"key:{i}" for i in range(keys)]
    try:
        for cache in caches.values():
            cache.set_many({name: {"n": i} for i, name in enumerate(names)})
        times: dict[str, list[float]] = {label: [] for label in caches}
        for _ in range(rounds):
            for label, cache in caches.items():
                cache.l1.clear()
                started = time.perf_counter()
                found = cache.get_many(names)
                times[label].append(time.perf_counter() - started)
                assert len(found) == keys
    finally:
        for cache in caches.values():
            cache.clear()
            cache.close()
    return {label: statistics.median(values) for label, values in times.items()}


def _pubsub_lags(publish: Any, subscriber: Any, channel: bytes, subscribe: str, rounds: int) -> list[float]:
    """Seconds from just before publish(channel, stamp) to the subscriber's thread seeing it."""
    pubsub = subscriber.pubsub()
    getattr(pubsub, subscribe)(channel)
    while pubsub.get_message(timeout=1.0) is None:  # the subscription's confirmation
        pass
    arrived: list[float] = []

    def listen() -> None:
        while len(arrived) < rounds:
            message = pubsub.get_message(timeout=1.0)
            if message and message["type"] in ("message", "smessage"):
                arrived.append(time.perf_counter() - float(message["data"]))

    listener = threading.Thread(target=listen)
    listener.start()
    for _ in range(rounds):
        publish(channel, repr(time.perf_counter()).encode())
        time.sleep(0.002)
    listener.join(30)
    pubsub.close()
    return arrived


def pubsub_lags(cluster: RedisCluster, rounds: int) -> dict[str, list[float]]:
    """Classic PUBLISH (subscriber on another node) and SPUBLISH (on the owning shard)."""
    client = redis.cluster.RedisCluster.from_url(cluster.masters[0].url)
    channel = b"lag-channel"
    owner = client.get_node_from_key(channel)
    other = next(node for node in client.get_primaries() if node.name != owner.name)
    publisher = redis.Redis(host=owner.host, port=owner.port)
    try:
        classic = _pubsub_lags(
            publisher.publish, redis.Redis(host=other.host, port=other.port), channel, "subscribe", rounds
        )
        sharded = _pubsub_lags(
            lambda chan, data: publisher.execute_command("SPUBLISH", chan, data),
            redis.Redis(host=owner.host, port=owner.port),
            channel,
            "ssubscribe",
            rounds,
        )
    finally:
        publisher.close()
        client.close()
    return {"classic PUBLISH": classic, "sharded SPUBLISH": sharded}


def _replicated(cache: TieredCache, key: str, replicas: list[RedisServer]) -> None:
    """Wait until a replica holds key (replication is asynchronous: a write the master
    acknowledged just before it died can be lost in the failover)."""
    rkey = cache.redis_key(key)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for replica in replicas:
            client = redis.Redis(port=replica.port)
            try:
                if isinstance(cache.redis, redis.cluster.RedisCluster):
                    client.execute_command("READONLY")  # a cluster replica answers reads only after it
                if client.exists(rkey):
                    return
            except redis.ResponseError:
                pass
            finally:
                client.close()
        time.sleep(0.01)
    raise AssertionError("no replica got the write")


def seconds_to_serve_again(url: str, kill: Any, replicas: list[RedisServer], key: str = "k0") -> float:
    """From kill() to the first get(key) answered by Redis (L1 emptied before each try)."""
    with TieredCache.from_url(url, name=f"fo{time.monotonic_ns()}") as cache:
        cache.wait_ready(10)
        assert cache.set(key, "v")
        _replicated(cache, key, replicas)
        kill(cache)
        died = time.monotonic()
        while time.monotonic() - died < 60:
            cache.l1.clear()
            if cache.get(key) == "v":
                return time.monotonic() - died
            time.sleep(0.01)
    raise AssertionError("not served again within 60 s")


def cluster_failover(key: str = "k0") -> float:
    with RedisCluster(masters=3, replicas=1) as cluster:

        def kill(cache: TieredCache) -> None:
            node = cache.redis.get_node_from_key(cache.redis_key(key))
            next(server for server in cluster.masters if server.port == node.port).kill()

        replicas = [server for group in cluster.replicas for server in group]
        return seconds_to_serve_again(cluster.url, kill, replicas, key)


def sentinel_failover() -> float:
    with RedisSentinel(replicas=1, sentinels=3) as group:
        return seconds_to_serve_again(group.url, lambda cache: group.master.kill(), group.replicas)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _quantiles(lags: list[float]) -> str:
    ordered = sorted(lags)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {_ms(statistics.median(ordered))}, p99 {_ms(p99)} ({len(ordered)} messages)"


def run(rounds: int, lag_rounds: int, failovers: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with RedisServer() as single, RedisCluster(masters=3) as cluster:
        results["get_many"] = get_many_medians({"one Redis": single.url, "cluster": cluster.url}, 1000, rounds)
        results["lag"] = {
            label: invalidation_lag.measure(url, lag_rounds)[0]
            for label, url in (("one Redis", single.url), ("cluster", cluster.url))
        }
        results["pubsub"] = pubsub_lags(cluster, lag_rounds)
    results["failover"] = {
        "cluster": [cluster_failover() for _ in range(failovers)],
        "sentinel": [sentinel_failover() for _ in range(failovers)],
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--lag-rounds", type=int, default=300)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()
    results = run(args.rounds, args.lag_rounds, args.failovers)
    many = results["get_many"]
    print(f"get_many(1000) from Redis, median of {args.rounds}:")
    for label, seconds in many.items():
        print(f"  {label:10s} {_ms(seconds)}")
    print(f"  cluster / one Redis: {many['cluster'] / many['one Redis']:.2f}x")
    print("invalidation lag, two processes, from set() returning:")
    for label, lags in results["lag"].items():
        print(f"  {label:10s} {_quantiles(lags)}")
    print("raw pub/sub lag on the cluster:")
    for label, lags in results["pubsub"].items():
        print(f"  {label:18s} {_quantiles(lags)}")
    print("from a master's death to get() served by Redis again:")
    for label, times in results["failover"].items():
        print(f"  {label:10s} " + ", ".join(f"{seconds:.2f} s" for seconds in times))


if __name__ == "__main__":
    main()
