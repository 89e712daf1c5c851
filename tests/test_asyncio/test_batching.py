"""Concurrent Redis calls of an AsyncTieredCache in shared round trips (aio.RoundTrips): tasks
that miss L1 in the same loop iteration share one MGET, writes one pipeline, each with its own
reply or error."""

from __future__ import annotations

import asyncio

import redis

from tiercache import AsyncTieredCache


def read_commands(client: redis.Redis) -> dict[str, int]:
    """How many GET and MGET commands the server has run."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget")}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in before}


async def test_200_concurrent_reads_take_one_mget_and_each_gets_its_own_value(acache, raw_redis):
    await acache.set_many({f"k{i}": {"n": i} for i in range(200)})
    acache.l1.clear()
    before = read_commands(raw_redis)
    values = await asyncio.gather(*(acache.get(f"k{i}") for i in range(200)))
    assert values == [{"n": i} for i in range(200)]
    assert delta(before, read_commands(raw_redis)) == {"get": 0, "mget": 1}
    stats = acache.stats()
    assert stats["l2_hits"] == 200 and stats["l2_duration"]["get"]["count"] == 1  # one round trip
    # and L1 was filled for each, through the fill guard
    hits = acache.l1.stats()["hits"]
    assert await asyncio.gather(*(acache.get(f"k{i}") for i in range(200))) == values
    assert acache.l1.stats()["hits"] == hits + 200


async def test_a_lone_read_is_a_get_and_duplicates_share_a_slot(acache, raw_redis):
    await acache.set("solo", 1)
    await acache.set("shared", 2)
    acache.l1.clear()
    before = read_commands(raw_redis)
    assert await acache.get("solo") == 1
    assert delta(before, read_commands(raw_redis)) == {"get": 1, "mget": 0}
    acache.l1.clear()
    results = await asyncio.gather(*(acache.get("shared") for _ in range(30)), acache.get("absent", "dflt"))
    assert results == [2] * 30 + ["dflt"]


async def test_batches_are_bounded(acache, raw_redis, monkeypatch):
    from tiercache.aio import RoundTrips

    monkeypatch.setattr(RoundTrips, "MAX_KEYS", 100)
    await acache.set_many({f"b{i}": i for i in range(250)})
    acache.l1.clear()
    before = read_commands(raw_redis)
    assert await asyncio.gather(*(acache.get(f"b{i}") for i in range(250))) == list(range(250))
    assert delta(before, read_commands(raw_redis)) == {"get": 0, "mget": 3}


async def test_a_cancelled_reader_leaves_the_batch_to_the_others(acache):
    await acache.set_many({f"c{i}": i for i in range(10)})
    acache.l1.clear()
    tasks = [asyncio.ensure_future(acache.get(f"c{i}")) for i in range(10)]
    await asyncio.sleep(0)  # every task has joined the batch
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [i for i in range(10) if i != 3]


async def test_redis_down_every_reader_degrades_with_its_own_error_one_verdict(own_redis, cache_name):
    cache = AsyncTieredCache.from_url(own_redis.url, name=cache_name, breaker_threshold=3)
    try:
        assert await cache.wait_ready(10)
        await cache.set_many({f"d{i}": i for i in range(20)})
        cache.l1.clear()
        own_redis.stop()
        values = await asyncio.gather(*(cache.get(f"d{i}", "fallback") for i in range(20)))
        assert values == ["fallback"] * 20  # each reader degraded on its own
        stats = cache.stats()
        assert stats["l2_errors"] == 1 and stats["breaker"] == "closed"  # one failed round trip
    finally:
        await cache.close()


async def test_a_sender_cancelled_before_it_starts_leaves_no_reader_waiting(acache):
    await acache.set("a", "A")
    acache.l1.clear()
    reader = asyncio.ensure_future(acache.get("a", "default"))
    await asyncio.sleep(0)  # the reader has joined the batch
    await asyncio.sleep(0)  # the batch went to a sender task, which has not run yet
    senders = [task for task in asyncio.all_tasks() if task.get_coro().__qualname__ == "RoundTrips._send_reads"]
    assert senders
    for task in senders:
        task.cancel()  # e.g. a shutdown sweep that spares the readers
    assert await asyncio.wait_for(reader, 5) == "default"  # degraded, not hung
    assert await acache.get("a") == "A"  # and the next batch works


async def test_concurrent_writes_share_one_pipeline_and_every_other_process_hears_them(acache, make_acache):
    other = await make_acache()
    await acache.set_many({f"w{i}": -1 for i in range(50)})
    assert [await other.get(f"w{i}") for i in range(50)] == [-1] * 50  # in the other's L1
    assert all(await asyncio.gather(*(acache.set(f"w{i}", i) for i in range(50))))
    assert acache.stats()["l2_duration"]["set"]["count"] == 1  # one round trip for the 50 sets
    for i in range(50):
        assert await other.get(f"w{i}") in (-1, i)  # until its invalidation lands...
    await asyncio.sleep(0.2)
    assert [await other.get(f"w{i}") for i in range(50)] == list(range(50))  # ...then the new
    assert other.stats()["l1_flushes"]["message_lost"] == 0


async def test_an_error_reply_fails_only_its_own_request_in_a_shared_pipeline(acache, raw_redis):
    await acache.set_many({"a": 1, "b": 2})
    raw_redis.rpush(acache._keys.redis_key("list"), b"x")  # EXPIRE's script answers WRONGTYPE
    results = await asyncio.gather(
        acache.set("a", 10), acache.expire("list", 5), acache.delete("b"), acache.set("c", 3)
    )
    assert results == [True, False, True, True]
    stats = acache.stats()
    assert stats["write_failures"] == 1 and stats["breaker"] == "closed"
    acache.l1.clear()
    assert [await acache.get(key) for key in "abc"] == [10, None, 3]


async def test_writes_to_a_dead_redis_all_fail_with_one_verdict(own_redis, cache_name):
    cache = AsyncTieredCache.from_url(own_redis.url, name=cache_name, breaker_threshold=3)
    try:
        assert await cache.wait_ready(10)
        own_redis.stop()
        assert await asyncio.gather(*(cache.set(f"x{i}", i) for i in range(10))) == [False] * 10
        assert cache.stats()["l2_errors"] == 1 and all(f"x{i}" not in cache.l1 for i in range(10))
    finally:
        await cache.close()


async def test_a_writer_cancelled_before_its_pipeline_is_never_sent(acache, raw_redis):
    """Withdrawn, as a single write cancelled before the wire; were it sent late, it could
    land after a newer write of the key (which returned True and filled L1) and undo it."""
    await acache.set("warm", 1)

    async def read_then_write():
        await acache.get("other")  # its MGET takes the idle connection in the first flush
        return await acache.set("k", "new")

    newer = asyncio.ensure_future(read_then_write())
    older = asyncio.ensure_future(acache.set("k", "old"))
    await asyncio.sleep(0)  # both queued, the flush not run yet
    older.cancel()
    results = await asyncio.gather(older, newer, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError) and results[1] is True
    await asyncio.sleep(0.1)
    stored = raw_redis.get(acache._keys.redis_key("k"))
    assert acache._shared.codec.decode(stored, b"")[0] == "new" and acache.l1.peek("k") == "new"


async def test_a_burst_of_writes_publishes_its_invalidations_in_order(acache, raw_redis, monkeypatch):
    """Pipelines of one burst go one after another: receivers see the numbers in order, so a
    big burst is no gap to flush L1 over."""
    import msgpack

    from tiercache.aio import RoundTrips

    monkeypatch.setattr(RoundTrips, "MAX_WRITES", 10)
    pubsub = raw_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(acache._shared.channel)
    pubsub.get_message(timeout=1)
    assert all(await asyncio.gather(*(acache.set(f"o{i}", i) for i in range(200))))
    numbers = []
    while len(numbers) < 200:
        message = pubsub.get_message(timeout=2)
        assert message is not None, f"only {len(numbers)} invalidations arrived"
        numbers.append(msgpack.unpackb(message["data"])[2])
    assert numbers == sorted(numbers)
    pubsub.close()
