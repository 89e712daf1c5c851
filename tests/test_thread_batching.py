"""ReadTrips: concurrent L2 reads of a TieredCache from many threads share round trips.

The first tests drive ReadTrips with a send function of their own (the round trip is an
argument, so the batching can be held at any point); the rest read through a real Redis and
count its commands with INFO commandstats."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from tiercache.cache import ReadTrips
from tiercache.errors import CacheUnavailable

from .conftest import wait_until


@pytest.fixture
def one_in_flight(monkeypatch):
    """The batching with one round trip in flight at a time, for the tests that hold it."""
    monkeypatch.setattr(ReadTrips, "MAX_IN_FLIGHT", 1)


class HeldSend:
    """A round trip that answers each key with key + b"!" once let go, recording each call."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.calls: list[list[bytes]] = []
        self.entered = threading.Event()
        self.go = threading.Event()
        self.fail = fail  # raised by every call after the first

    def __call__(self, keys: list[bytes]) -> list[bytes]:
        self.calls.append(list(keys))
        self.entered.set()
        assert self.go.wait(10)
        if self.fail is not None and len(self.calls) > 1:
            raise self.fail
        return [key + b"!" for key in keys]


def read_in_thread(trips: ReadTrips, send, key: bytes, results: dict, errors: dict) -> threading.Thread:
    def run() -> None:
        try:
            results[key] = trips.get(send, key)
        except BaseException as exc:  # the test inspects it
            errors[key] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def waiting_on(trips: ReadTrips, keys: int) -> bool:
    """Whether the next batch holds this many keys."""
    return bool(trips._queue) and len(trips._queue[-1].keys) == keys


def test_a_lone_read_goes_at_once_alone():
    trips = ReadTrips()
    calls = []

    def send(keys):
        calls.append(list(keys))
        return [b"v"]

    assert trips.get(send, b"k") == b"v"
    assert calls == [[b"k"]]
    assert trips.get(send, b"k") == b"v"  # nothing left in flight
    assert calls == [[b"k"], [b"k"]]


def test_reads_arriving_during_a_round_trip_share_the_next_one(one_in_flight):
    trips, send = ReadTrips(), HeldSend()
    results: dict = {}
    errors: dict = {}
    first = read_in_thread(trips, send, b"first", results, errors)
    assert send.entered.wait(5)
    others = [read_in_thread(trips, send, b"k%d" % i, results, errors) for i in range(20)]
    again = read_in_thread(trips, send, b"k3", results, errors)  # a key already in the batch
    assert wait_until(lambda: waiting_on(trips, 20) and len(trips._queue[-1].slots) == 20)
    assert wait_until(lambda: again.is_alive())
    send.go.set()
    for thread in [first, *others, again]:
        thread.join(10)
    assert not errors
    assert results == {key: key + b"!" for key in [b"first", *(b"k%d" % i for i in range(20))]}
    assert send.calls[0] == [b"first"]
    assert sorted(send.calls[1]) == sorted(b"k%d" % i for i in range(20))  # k3 once
    assert len(send.calls) == 2
    assert not trips._places and not trips._queue


def test_a_slow_round_trip_does_not_hold_back_a_second_reader():
    """Two reads go at once (MAX_IN_FLIGHT): only a third waits for one of them."""
    trips, send = ReadTrips(), HeldSend()
    results: dict = {}
    errors: dict = {}
    slow = read_in_thread(trips, send, b"slow", results, errors)
    assert send.entered.wait(5)
    quick = trips.get(lambda keys: [b"quick!"], b"quick")  # not queued behind the slow one
    assert quick == b"quick!" and slow.is_alive()
    held = [read_in_thread(trips, send, b"second", results, errors)]
    assert wait_until(lambda: len(send.calls) == 2)  # in flight beside the slow one
    held.append(read_in_thread(trips, send, b"third", results, errors))
    assert wait_until(lambda: waiting_on(trips, 1))  # two in flight: the third waits
    send.go.set()
    for thread in [slow, *held]:
        thread.join(10)
    assert results == {b"slow": b"slow!", b"second": b"second!", b"third": b"third!"}
    assert not trips._places and not trips._queue


def test_a_batch_is_never_larger_than_max_keys(monkeypatch, one_in_flight):
    monkeypatch.setattr(ReadTrips, "MAX_KEYS", 4)
    trips, send = ReadTrips(), HeldSend()
    results: dict = {}
    errors: dict = {}
    threads = [read_in_thread(trips, send, b"first", results, errors)]
    assert send.entered.wait(5)
    threads += [read_in_thread(trips, send, b"k%d" % i, results, errors) for i in range(10)]
    assert wait_until(lambda: sum(len(batch.keys) for batch in trips._queue) == 10)
    send.go.set()
    for thread in threads:
        thread.join(10)
    assert not errors and len(results) == 11
    assert [len(call) for call in send.calls] == [1, 4, 4, 2]


def test_a_failed_round_trip_fails_each_reader_with_its_own_copy(one_in_flight):
    trips = ReadTrips()
    send = HeldSend(fail=CacheUnavailable("Redis is down"))
    results: dict = {}
    errors: dict = {}
    first = read_in_thread(trips, send, b"first", results, errors)
    assert send.entered.wait(5)
    readers = [read_in_thread(trips, send, b"k%d" % i, results, errors) for i in range(5)]
    assert wait_until(lambda: waiting_on(trips, 5))
    send.go.set()
    for thread in [first, *readers]:
        thread.join(10)
    assert b"first" in results  # its round trip answered before the failure
    failures = [errors[b"k%d" % i] for i in range(5)]
    assert all(type(exc) is CacheUnavailable and str(exc) == "Redis is down" for exc in failures)
    assert len({id(exc) for exc in failures}) == 5
    assert not trips._places and not trips._queue


def test_batches_waiting_behind_a_round_trip_that_found_redis_down_fail_at_once(one_in_flight):
    """A get must not take two timeouts: the batch behind a failed round trip is not sent."""
    trips = ReadTrips()
    sent: list[list[bytes]] = []
    entered, go = threading.Event(), threading.Event()

    def send(keys):
        sent.append(list(keys))
        entered.set()
        assert go.wait(10)
        raise CacheUnavailable("Redis is down")

    results: dict = {}
    errors: dict = {}
    first = read_in_thread(trips, send, b"first", results, errors)
    assert entered.wait(5)
    queued = [read_in_thread(trips, send, b"k%d" % i, results, errors) for i in range(3)]
    assert wait_until(lambda: waiting_on(trips, 3))
    go.set()
    for thread in [first, *queued]:
        thread.join(10)
    assert isinstance(errors[b"first"], CacheUnavailable)
    assert all(isinstance(errors[b"k%d" % i], CacheUnavailable) for i in range(3))
    assert len({id(errors[b"k%d" % i]) for i in range(3)}) == 3
    assert sent == [[b"first"]]  # the batch never went
    assert not trips._places and not trips._queue


def test_no_wait_outlasts_the_bound_and_a_stale_place_is_taken_back(one_in_flight):
    """A place whose thread vanished (interrupted between taking and giving it back): the
    batch waiting for it goes after bound, and the place is reaped."""
    trips = ReadTrips(bound=0.2)
    trips._places[-1] = time.monotonic()  # held by nobody
    sent = []

    def send(keys):
        sent.append(list(keys))
        return [b"v"] * len(keys)

    start = time.monotonic()
    assert trips.get(send, b"k") == b"v"
    assert 0.15 <= time.monotonic() - start < 5
    assert sent == [[b"k"]] and len(trips._places) == 1 and not trips._queue  # only the stale one
    trips._places.clear()
    trips._places[-1] = time.monotonic() - 1.0  # older than bound: reaped, the read goes at once
    start = time.monotonic()
    assert trips.get(send, b"k2") == b"v" and time.monotonic() - start < 0.15


def test_a_reader_whose_sender_vanished_reads_alone_after_the_bound(one_in_flight):
    trips = ReadTrips(bound=0.1)
    trips._places[-1] = time.monotonic() + 60  # a place that stays taken
    orphan = trips._queue
    from tiercache.cache import _Batch

    orphan.append(_Batch())  # a batch whose opener is gone
    sent = []

    def send(keys):
        sent.append(list(keys))
        return [b"alone"]

    start = time.monotonic()
    assert trips.get(send, b"k") == b"alone"  # joined the orphan, then gave up on it
    assert 0.15 <= time.monotonic() - start < 5
    assert sent == [[b"k"]]


class Interrupted(BaseException):
    pass


def test_a_sender_interrupted_while_waiting_fails_its_batch_and_leaves_nobody_waiting(one_in_flight):
    """The thread that opened a batch is interrupted (a signal, here in the main thread)
    while the round trip before it is in flight: its readers get CacheUnavailable, and the
    reads after it still go."""
    trips, send = ReadTrips(), HeldSend()
    results: dict = {}
    errors: dict = {}
    first = read_in_thread(trips, send, b"first", results, errors)
    assert send.entered.wait(5)

    def interrupt(signum, frame):
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        follower: list[threading.Thread] = []

        def join_later() -> None:  # joins the main thread's batch, then the signal comes
            assert wait_until(lambda: waiting_on(trips, 1))
            follower.append(read_in_thread(trips, send, b"follower", results, errors))
            assert wait_until(lambda: waiting_on(trips, 2))
            signal.setitimer(signal.ITIMER_REAL, 0.05)

        helper = threading.Thread(target=join_later)
        helper.start()
        with pytest.raises(Interrupted):
            trips.get(send, b"main")
        helper.join(10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    follower[0].join(10)
    assert isinstance(errors[b"follower"], CacheUnavailable)
    send.go.set()
    first.join(10)
    assert results[b"first"] == b"first!"
    assert trips.get(lambda keys: [b"after"], b"later") == b"after"  # nothing stuck in flight


def test_an_interrupted_round_trip_is_a_miss_to_the_other_readers(one_in_flight):
    trips = ReadTrips()
    send = HeldSend(fail=Interrupted())
    results: dict = {}
    errors: dict = {}
    first = read_in_thread(trips, send, b"first", results, errors)
    assert send.entered.wait(5)
    send.entered.clear()
    opener = read_in_thread(trips, send, b"a", results, errors)
    assert wait_until(lambda: waiting_on(trips, 1))
    follower = read_in_thread(trips, send, b"b", results, errors)
    assert wait_until(lambda: waiting_on(trips, 2))
    send.go.set()
    for thread in (first, opener, follower):
        thread.join(10)
    assert isinstance(errors[b"a"], Interrupted)  # its own
    assert isinstance(errors[b"b"], CacheUnavailable)  # to the others, no answer
    assert isinstance(errors[b"b"].__cause__, Interrupted)


# -- through a real Redis ----------------------------------------------------------------


def commands(raw_redis, name: str) -> int:
    return int(raw_redis.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_many_threads_reading_from_redis_share_round_trips(make_cache, raw_redis):
    cache = make_cache(l1_maxsize=0)  # every read goes to Redis
    keys = [f"key:{i}" for i in range(200)]
    cache.set_many({key: {"n": i} for i, key in enumerate(keys)})
    before = commands(raw_redis, "get") + commands(raw_redis, "mget")
    reads = 0
    results: dict = {}
    barrier = threading.Barrier(16)

    def reader(index: int) -> None:
        barrier.wait()
        for round_ in range(10):
            key = keys[(index * 10 + round_) % len(keys)]
            results[(index, round_)] = (key, cache.get(key))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    reads = len(results)
    assert reads == 160
    assert all(value == {"n": keys.index(key)} for key, value in results.values())
    round_trips = commands(raw_redis, "get") + commands(raw_redis, "mget") - before
    assert round_trips < reads
    stats = cache.stats()
    assert stats["l2_hits"] >= 160


def test_a_lone_reader_sends_a_plain_get(make_cache, raw_redis):
    cache = make_cache(l1_maxsize=0)
    cache.set("alone", 1)
    gets, mgets = commands(raw_redis, "get"), commands(raw_redis, "mget")
    assert cache.get("alone") == 1
    assert commands(raw_redis, "get") == gets + 1
    assert commands(raw_redis, "mget") == mgets


def test_threads_reading_while_redis_dies_all_return(make_cache, own_redis):
    cache = make_cache(url=own_redis.url, l1_maxsize=0)
    cache.set_many({f"k{i}": i for i in range(50)})
    finished: list[int] = []
    stop = threading.Event()

    def reader(index: int) -> None:
        while not stop.is_set():
            assert cache.get(f"k{index}") in (index, None)
        finished.append(index)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    own_redis.kill()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(20)
    assert sorted(finished) == list(range(16))
    assert cache.get("k1") is None  # a miss, not an error
