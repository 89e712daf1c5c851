"""Invalidation between processes: writes elsewhere drop L1 copies here, no race puts an old
value back, and a lost or silent channel empties L1 before it serves again."""

from __future__ import annotations

import multiprocessing
import threading
import time

import msgpack
import pytest
import redis
from redis._parsers import _RESP2Parser

from tests.conftest import wait_until
from tiercache import TieredCache
from tiercache.core import plans
from tiercache.core.invalidation import KEYS, VERSION
from tiercache.testing import RedisServer

BUS = {"heartbeat": 0.1, "max_silence": 0.4, "gap_grace": 0.2}


def settled(writer, reader):
    """True once reader has received every message writer sent (a read begun before an
    invalidation arrives is, rightly, not kept in L1)."""
    return wait_until(lambda: reader.stats()["invalidations_received"] >= writer.stats()["invalidations_sent"])


@pytest.fixture
def pair(make_cache):
    """Two caches of one name: two origins, as two processes would be."""
    return make_cache(**BUS), make_cache(**BUS)


def test_set_delete_and_clear_elsewhere_drop_the_l1_copy(pair):
    writer, reader = pair
    writer.set("k", "v1")
    assert settled(writer, reader)
    assert reader.get("k") == "v1" and "k" in reader.l1
    writer.set("k", "v2")
    assert wait_until(lambda: "k" not in reader.l1)
    assert reader.get("k") == "v2"
    writer.delete("k")
    assert wait_until(lambda: "k" not in reader.l1)
    assert reader.get("k") is None
    writer.set_many({"a": "1", "b": "2"})
    writer.namespace("t").set("c", "3")
    assert settled(writer, reader)
    assert reader.get_many(["a", "b"]) == {"a": "1", "b": "2"}
    assert reader.namespace("t").get("c") == "3"
    assert len(reader.l1) == 3
    writer.clear()
    assert wait_until(lambda: len(reader.l1) == 0)
    assert reader.get("a") is None and reader.namespace("t").get("c") is None


def test_a_bulk_write_is_one_message(pair):
    writer, reader = pair
    before = reader.stats()["invalidations_received"]
    writer.set_many({f"k{i}": i for i in range(1000)})
    assert writer.stats()["invalidations_sent"] == 1
    assert wait_until(lambda: reader.stats()["invalidations_received"] == before + 1)
    time.sleep(0.05)
    assert reader.stats()["invalidations_received"] == before + 1


def test_own_messages_are_ignored(pair):
    writer, reader = pair
    writer.set("k", "mine")
    writer.set("k2", "mine")
    assert wait_until(lambda: reader.stats()["invalidations_received"] == 2)
    assert writer.stats()["invalidations_received"] == 0
    assert writer.l1.peek("k") == "mine" and writer.l1.peek("k2") == "mine"


def test_incr_and_expire_invalidate_too(pair):
    writer, reader = pair
    writer.set("n", 1)
    assert reader.get("n") == 1
    writer.incr("n")
    assert wait_until(lambda: reader.get("n") == 2)
    writer.set("t", "v", ttl=100)
    assert settled(writer, reader)
    reader.get("t")
    assert "t" in reader.l1
    writer.expire("t", 1)
    assert wait_until(lambda: "t" not in reader.l1)


def test_race_read_reply_delayed_past_an_invalidation_never_fills_l1(pair, raw_redis):
    """The old value is read from Redis, a write elsewhere lands and its invalidation
    arrives, and only then does the read's reply reach the cache: L1 must stay clean."""
    writer, reader = pair
    for attempt in range(50):
        key = f"race{attempt}"
        writer.set(key, "old")
        plan = plans.get(reader._scope, key, None)
        request = next(plan)  # GET sent...
        old_reply = raw_redis.get(request.key)  # ...and answered with the old value
        received = reader.stats()["invalidations_received"]
        writer.set(key, "new")
        assert wait_until(lambda: reader.stats()["invalidations_received"] > received)
        with pytest.raises(StopIteration) as done:
            plan.send(old_reply)  # the delayed reply arrives after the invalidation
        assert done.value.value == "old"
        assert key not in reader.l1
        assert reader.get(key) == "new"
    assert reader.stats()["fills_dropped"] >= 50


def _child(url, name, commands, done):
    """Another process: a cache that writes what it is told to."""
    with TieredCache.from_url(url, name=name, **BUS) as cache:
        cache.wait_ready(10)
        for op, key, value in iter(commands.get, None):
            if op == "set":
                cache.set(key, value)
            elif op == "delete":
                cache.delete(key)
            else:
                cache.clear()
            done.put(op)


def test_another_process_writes(redis_server, make_cache):
    reader = make_cache(**BUS)
    ctx = multiprocessing.get_context("spawn")
    commands, done = ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=_child, args=(redis_server.url, reader.name, commands, done), daemon=True)
    child.start()
    try:
        reader.set("k", "from parent")
        assert reader.get("k") == "from parent"
        for op, key, value, expected in [
            ("set", "k", "from child", "from child"),
            ("delete", "k", None, None),
            ("set", "k", "again", "again"),
            ("clear", None, None, None),
        ]:
            reader.get("k")
            commands.put((op, key, value))
            assert done.get(timeout=30) == op
            assert wait_until(lambda: "k" not in reader.l1)
            assert reader.get("k") == expected
    finally:
        commands.put(None)
        child.join(30)
        if child.is_alive():
            child.kill()


# -- faults --------------------------------------------------------------------------------


@pytest.fixture
def own_pair(own_redis):
    caches = [TieredCache.from_url(own_redis.url, name="faults", **BUS) for _ in range(2)]
    for cache in caches:
        assert cache.wait_ready(10)
    yield caches
    for cache in caches:
        cache.close()


def subscriber_ids(client):
    return [entry["id"] for entry in client.client_list() if int(entry.get("sub", 0)) > 0]


def test_subscriber_connection_killed(own_redis, own_pair):
    writer, reader = own_pair
    client = redis.Redis.from_url(own_redis.url)
    writer.set("k", "v1")
    assert reader.get("k") == "v1"
    for client_id in subscriber_ids(client):
        client.client_kill_filter(_id=client_id)
    assert wait_until(lambda: reader.stats()["reconnects"] >= 1)
    # A write while the reader was away: its L1 was emptied, so it cannot serve v1.
    writer.set("k", "v2")
    assert reader.get("k") == "v2"
    assert reader.wait_ready(10)
    assert reader.stats()["l1_flushes"].get("disconnect", 0) >= 1
    reader.get("k")
    writer.set("k", "v3")  # the new subscription works
    assert wait_until(lambda: reader.get("k") == "v3")
    client.close()


def test_redis_restarted_on_the_same_port(own_redis, own_pair):
    writer, reader = own_pair
    writer.set("k", "v1")
    assert reader.get("k") == "v1"
    own_redis.restart()
    assert wait_until(lambda: writer.set("k", "v2"))
    assert reader.wait_ready(10) and writer.wait_ready(10)
    assert reader.get("k") == "v2"
    writer.set("k", "v3")
    assert wait_until(lambda: reader.get("k") == "v3")


def test_redis_paused_past_max_silence_shuts_l1(own_redis, own_pair):
    writer, reader = own_pair
    writer.set("k", "v1")
    assert reader.get("k") == "v1"
    own_redis.pause()
    try:
        assert wait_until(lambda: not reader.l1_enabled)
        assert len(reader.l1) == 0
    finally:
        own_redis.resume()
    assert reader.wait_ready(10)
    assert reader.stats()["l1_flushes"].get("silence", 0) >= 1
    assert reader.get("k") == "v1"


def test_slow_subscriber_cut_off_by_the_output_buffer_limit(own_redis, own_pair):
    writer, reader = own_pair
    client = redis.Redis.from_url(own_redis.url)
    client.config_set("client-output-buffer-limit", "pubsub 4kb 4kb 0")
    reader.get("k")
    guard = reader._shared.guard
    writer.set("trigger", 1)
    guard._lock.acquire()  # the subscriber blocks on its next message: it stops reading
    try:
        for _ in range(20):  # more than the kernel's socket buffers hold
            client.publish(writer._shared.publisher.channel, b"x" * 1_000_000)
        writer.set("k", "new")
        assert wait_until(lambda: len(subscriber_ids(client)) < 2)  # Redis dropped it
    finally:
        guard._lock.release()
    assert wait_until(lambda: reader.stats()["reconnects"] >= 1)
    assert reader.get("k") == "new"
    client.close()


def test_a_lost_message_flushes_l1(pair, raw_redis):
    writer, reader = pair
    writer.set("k", "v")
    reader.get("k")
    publisher = writer._shared.publisher
    publisher._seq += 1  # a message that never reaches anyone
    writer.set("other", 1)
    assert wait_until(lambda: reader.stats()["messages_lost"] == 1)
    assert "k" not in reader.l1


def test_out_of_order_messages_are_not_a_loss(pair, raw_redis):
    writer, reader = pair
    publisher = writer._shared.publisher
    channel = publisher.channel
    reader.set("seed", 1)
    writer.set("first", 1)  # the reader now knows this origin
    assert wait_until(lambda: reader.stats()["invalidations_received"] >= 1)
    seq = publisher._seq
    for offset in (2, 1):  # seq+2 arrives before seq+1
        raw_redis.publish(channel, msgpack.packb([VERSION, publisher.origin, seq + offset, KEYS, []]))
    publisher._seq += 2
    time.sleep(0.5)  # past gap_grace
    writer.set("last", 1)
    assert wait_until(lambda: reader.stats()["invalidations_received"] >= 4)
    assert reader.stats()["messages_lost"] == 0


def test_readers_in_many_threads_converge_on_the_last_write(pair):
    """While one cache writes, four threads read through another; once the writes stop and
    the last invalidation has been applied, no thread can find an older value in L1."""
    writer, reader = pair
    writer.set("counter", 0)
    stop = threading.Event()
    errors = []

    def read():
        try:
            while not stop.is_set():
                reader.get("counter")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for version in range(1, 200):
        writer.set("counter", version)
    received = writer.stats()["invalidations_sent"]
    assert wait_until(lambda: reader.stats()["invalidations_received"] >= received)
    time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert reader.l1.peek("counter") in (None, 199)
    assert reader.get("counter") == 199


# -- invalidation="tracking" -------------------------------------------------------------


@pytest.mark.parametrize("parser", ["default", "resp2"])
def test_tracking_mode_sees_writes_by_other_redis_clients(make_cache, raw_redis, parser):
    # redis-py's own RESP2 parser has no pushes: tracking's invalidations come as messages.
    options = {"redis_options": {"protocol": 2, "parser_class": _RESP2Parser}} if parser == "resp2" else {}
    cache = make_cache(invalidation="tracking", **BUS, **options)
    assert cache.stats()["invalidation"] == "tracking"
    for key in ("a", "b", "c"):
        cache.set(key, "cached")
    time.sleep(0.05)  # our own writes come back through tracking too
    for key in ("a", "b", "c"):
        cache.get(key)
    assert len(cache.l1) == 3
    raw_redis.set(cache.redis_key("a"), b"7")  # another client, no tiercache involved
    raw_redis.delete(cache.redis_key("b"))
    raw_redis.pexpire(cache.redis_key("c"), 1)
    assert wait_until(lambda: len(cache.l1) == 0)
    assert cache.get("a") == 7 and cache.get("b") is None


def test_tracking_mode_survives_losing_its_connection(own_redis):
    with TieredCache.from_url(own_redis.url, name="t", invalidation="tracking", **BUS) as cache:
        assert cache.wait_ready(10)
        client = redis.Redis.from_url(own_redis.url)
        client.client_kill_filter(_type="normal")  # the tracking connection among them
        assert wait_until(lambda: cache.stats()["reconnects"] >= 1)
        assert cache.wait_ready(10) and cache.stats()["invalidation"] == "tracking"
        cache.set("k", "v")
        time.sleep(0.05)
        cache.get("k")
        client.set(cache.redis_key("k"), b"1")
        assert wait_until(lambda: "k" not in cache.l1)
        client.close()


def test_tracking_over_a_unix_socket_falls_back_to_pubsub(tmp_path):
    """CLIENT LIST cannot name a unix-socket connection by address: the cache must not loop
    on it with L1 shut, but serve on pub/sub (and say so)."""
    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=("--unixsocket", str(socket_path))) as server:
        url = f"unix://{socket_path}"
        with (
            TieredCache.from_url(url, name="t", invalidation="tracking", **BUS) as cache,
            TieredCache.from_url(url, name="t", **BUS) as writer,
        ):
            assert cache.wait_ready(10) and writer.wait_ready(10)
            assert cache.stats()["invalidation"] == "pubsub"
            writer.set("k", "v1")
            assert wait_until(lambda: cache.get("k") == "v1")
            writer.set("k", "v2")
            assert wait_until(lambda: cache.get("k") == "v2")
        assert server.ping()


def test_tracking_falls_back_to_pubsub_without_server_support(own_redis):
    server = type(own_redis)(extra_args=("--rename-command", "CLIENT", ""))
    with server, TieredCache.from_url(server.url, name="t", invalidation="tracking", **BUS) as cache:
        assert cache.wait_ready(10)
        assert cache.stats()["invalidation"] == "pubsub"
        with TieredCache.from_url(server.url, name="t", **BUS) as writer:
            assert writer.wait_ready(10)
            writer.set("k", "v1")
            assert wait_until(lambda: cache.get("k") == "v1")
            writer.set("k", "v2")
            assert wait_until(lambda: cache.get("k") == "v2")
