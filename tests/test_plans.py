"""The operations' plans, stepped by hand without Redis (tiercache.testing.Stepper).

Each test answers a plan's requests with what Redis would reply, or fails them, in an order
a real server and network can produce but a test against one cannot force: a reply that
arrives after a write landed, two writes whose replies cross, a write whose outcome is
unknown. The drivers and Redis itself are tested elsewhere (test_tiered, test_invalidation)."""

from __future__ import annotations

import math
import time

import msgpack
import pytest

from tiercache import CacheUnavailable, RedisReplyError
from tiercache.codec import EXTENDED, HEADER_EXT, MSGPACK
from tiercache.core import invalidation, plans
from tiercache.core.lease import FILL_UNLEASED
from tiercache.core.requests import (
    PTTL,
    Call,
    Delete,
    Do,
    Eval,
    Flight,
    Get,
    IncrBy,
    MGet,
    Pause,
    Pipeline,
    Publish,
    Ready,
    Receive,
    Scan,
    Set,
    Sleep,
    Subscribe,
    Unlink,
)
from tiercache.local import MISSING
from tiercache.testing import Stepper, plan_scope


@pytest.fixture
def scope():
    return plan_scope("t", l1_ttl=30, default_ttl=300)


def encoded(scope, key, value, ttl_ms=300_000):
    return scope.shared.codec.encode(value, scope.keys.redis_key(key), ttl_ms)


# -- reads ------------------------------------------------------------------------------------


def test_a_redis_hit_fills_l1_and_counts(scope):
    read = Stepper(plans.get(scope, "k", None))
    assert read.request == Get(b"tc:t:k")
    read.send(encoded(scope, "k", {"a": 1}))
    assert read.done and read.result == {"a": 1}
    assert scope.shared.l1.get("k") == {"a": 1}
    assert 0 < scope.shared.l1.ttl("k") <= 30
    assert (scope.shared.stats.l2_hits, scope.shared.stats.l2_misses) == (1, 0)


def test_a_redis_miss_and_an_unanswered_get_are_misses(scope):
    miss = Stepper(plans.get(scope, "k", None))
    miss.send(None)
    down = Stepper(plans.get(scope, "k", None))
    down.throw(CacheUnavailable("no answer"))
    assert miss.result is MISSING and down.result is MISSING
    assert scope.shared.stats.l2_misses == 1  # Redis did not say "miss" the second time
    assert "k" not in scope.shared.l1


def test_an_error_reply_or_corrupt_bytes_are_counted_misses(scope):
    wrong_type = Stepper(plans.get(scope, "k", None))
    wrong_type.throw(RedisReplyError("WRONGTYPE"))
    corrupt = Stepper(plans.get(scope, "k", None))
    corrupt.send(b"\x10" + bytes(8) + b"\xc1")  # the header, then msgpack's "never used" byte
    assert wrong_type.result is MISSING and corrupt.result is MISSING
    assert scope.shared.stats.decode_errors == 2


def test_a_plain_integer_asks_redis_for_its_ttl(scope):
    read = Stepper(plans.get(scope, "n", None))
    assert read.send(b"41") == PTTL(b"tc:t:n")
    read.send(5_000)
    assert read.result == 41
    assert 4 < scope.shared.l1.ttl("n") <= 5


def test_a_read_overtaken_by_a_write_does_not_fill(scope):
    read = Stepper(plans.get(scope, "k", None))  # GET is on the wire
    write = Stepper(plans.set(scope, "k", "new", None))
    write.send(True)  # the write lands first
    assert scope.shared.l1.get("k") == "new"
    read.send(encoded(scope, "k", "old"))  # then the old reply arrives
    assert read.result == "old"  # the caller gets what it read...
    assert scope.shared.l1.get("k") == "new"  # ...L1 keeps the newer value
    assert scope.shared.guard.dropped == 1


def test_a_read_overtaken_by_an_invalidation_does_not_fill(scope):
    read = Stepper(plans.get(scope, "k", None))
    scope.shared.guard.invalidate(["k"])  # another process wrote k meanwhile
    read.send(encoded(scope, "k", "old"))
    assert "k" not in scope.shared.l1


def test_a_shut_l1_stores_nothing(scope):
    scope.shared.guard.shut()
    read = Stepper(plans.get(scope, "k", None))
    read.send(encoded(scope, "k", "v"))
    assert read.result == "v" and len(scope.shared.l1) == 0


def test_get_many_asks_redis_only_for_l1_misses(scope):
    scope.shared.l1.set("a", "from l1")
    batch = Stepper(plans.get_many(scope, ["a", "b", "c", "d"]))
    assert batch.request == MGet([b"tc:t:b", b"tc:t:c", b"tc:t:d"])
    batch.send([encoded(scope, "b", "B"), None, b"\xff garbage"])
    assert batch.result == {"a": "from l1", "b": "B"}
    assert scope.shared.l1.get("b") == "B" and "d" not in scope.shared.l1
    stats = scope.shared.stats
    assert (stats.l2_hits, stats.l2_misses, stats.decode_errors) == (1, 2, 1)


def test_get_many_with_redis_down_answers_from_l1(scope):
    scope.shared.l1.set("a", 1)
    batch = Stepper(plans.get_many(scope, ["a", "b"]))
    batch.throw(CacheUnavailable("no answer"))
    assert batch.result == {"a": 1}


# -- read-through ------------------------------------------------------------------------------


def test_get_or_load_runs_the_load_as_one_flight(scope):
    def loader(key):
        return key.upper()

    outer = Stepper(plans.get_or_load(scope, "k", loader, 60))
    flight = outer.request
    assert isinstance(flight, Flight) and flight.key == "k"
    load = Stepper(flight.plan)
    assert load.request == Get(b"tc:t:k")
    assert load.send(None) == Call(loader, ("k",))
    stored = load.send("K")  # as SET NX, except over a value past its logical expiry
    assert isinstance(stored, Eval) and stored.script == FILL_UNLEASED and stored.args[1] == 60_000
    load.send(1)
    assert load.result == "K" and scope.shared.l1.get("k") == "K"
    outer.send(load.result)
    assert outer.result == "K" and scope.shared.stats.loads == 1


def loading(scope, key, loader, ttl_ms=None):
    return plans.Loading(key, key, scope.keys.redis_key(key), loader, ttl_ms, None, None, (), scope.shared.freshness)


def test_a_value_loaded_while_the_key_was_written_is_not_kept(scope):
    load = Stepper(plans.load(scope, loading(scope, "k", lambda key: "loaded")))
    load.send(None)  # Redis miss: the loader runs
    write = Stepper(plans.set(scope, "k", "written", None))
    write.send(True)
    load.send("loaded")  # the loader returns, after the write
    load.send(None)  # SET NX: the key exists, nothing stored
    assert load.result == "loaded"
    assert scope.shared.l1.get("k") == "written"


def test_a_failing_loader_is_counted_and_raises(scope):
    load = Stepper(plans.load(scope, loading(scope, "k", lambda key: 1)))
    load.send(None)
    with pytest.raises(LookupError):
        load.throw(LookupError("no such row"))
    assert (scope.shared.stats.loads, scope.shared.stats.load_errors) == (0, 1)


def test_get_or_load_checks_its_arguments_before_anything(scope):
    with pytest.raises(TypeError, match="loader must be callable"):
        Stepper(plans.get_or_load(scope, "k", "not callable", None))
    with pytest.raises(TypeError, match="keys must be str or bytes"):
        Stepper(plans.get_or_load(scope, 42, lambda key: 1, None))


# -- writes -------------------------------------------------------------------------------------


def test_set_stores_what_other_processes_will_read(scope):
    write = Stepper(plans.set(scope, "k", (1, 2), 10))
    request = write.request
    assert isinstance(request, Set) and request.px == 10_000
    write.send(True)
    assert write.result is True
    assert scope.shared.l1.get("k") == (1, 2)
    assert scope.shared.l1.ttl("k") <= 10


def test_two_writes_in_flight_leave_l1_empty(scope):
    first = Stepper(plans.set(scope, "k", "one", None))
    second = Stepper(plans.set(scope, "k", "two", None))
    second.send(True)
    first.send(True)  # their order in Redis is unknown here
    assert "k" not in scope.shared.l1


@pytest.mark.parametrize(
    "failure", [RedisReplyError("OOM command not allowed"), CacheUnavailable("no answer")], ids=["refused", "no-answer"]
)
def test_a_write_that_did_not_land_returns_false_and_leaves_no_l1_copy(scope, failure):
    scope.shared.l1.set("k", "old")
    write = Stepper(plans.set(scope, "k", "new", None))
    write.throw(failure)
    assert write.result is False and "k" not in scope.shared.l1
    assert scope.shared.stats.write_failures == 1


def test_a_cancelled_write_leaves_no_l1_copy(scope):
    scope.shared.l1.set("k", "old")
    write = Stepper(plans.set(scope, "k", "maybe", None))
    with pytest.raises(KeyboardInterrupt):
        write.throw(KeyboardInterrupt())
    assert "k" not in scope.shared.l1


@pytest.mark.parametrize(
    ("failure", "match"),
    [
        (RedisReplyError("OOM command not allowed"), "Redis refused set: OOM"),
        (CacheUnavailable("no answer"), "set did not reach Redis"),
    ],
    ids=["refused", "no-answer"],
)
def test_strict_writes_raise_why(failure, match):
    scope = plan_scope(strict=True)
    write = Stepper(plans.set(scope, "k", "v", None))
    with pytest.raises(type(failure), match=match):
        write.throw(failure)


def test_a_stepper_refuses_to_answer_a_finished_plan(scope):
    ask = Stepper(plans.ttl(scope, "k"))
    ask.send([-2])
    with pytest.raises(RuntimeError, match="the plan is done"):
        ask.send([1000, b""])
    assert ask.result is None


def test_the_writer_runs_before_redis_and_sees_deleted():
    calls = []
    scope = plan_scope(writer=lambda key, value: calls.append((key, value)))
    write = Stepper(plans.delete(scope, ["a", "b"], "delete_many"))
    for _ in range(2):
        call = write.request
        assert isinstance(call, Call)
        call.func(*call.args)
        write.send(None)
    assert write.request == Delete((b"tc:t:a", b"tc:t:b"))
    write.send(2)
    assert write.result == 2
    assert calls == [("a", plans.DELETED), ("b", plans.DELETED)]


def test_a_write_publishes_its_invalidation_in_the_same_round_trip():
    scope = plan_scope(invalidation="pubsub")
    write = Stepper(plans.set(scope, "k", "v", None))
    request = write.request  # one command: SET, then PUBLISH, in one script
    assert isinstance(request, Eval) and request.op == "set" and request.script == plans.WRITE_ONE
    assert request.keys == (b"tc:t:k",)  # no lease key: plan_scope has leases off
    channel, message, command, data, px_flag, px = request.args
    assert (command, px_flag, px) == (b"SET", b"PX", b"%d" % scope.shared.ttl_ms(None))
    assert channel == scope.shared.channel and data[:1] != b""
    version, origin, seq, op, keys, _sent = msgpack.unpackb(message)
    assert (version, op, keys) == (invalidation.VERSION, invalidation.KEYS, [b"tc:t:k"])
    assert origin == scope.shared.publisher.origin and seq == 1
    write.send(True)
    assert write.result is True and scope.shared.stats.invalidations_sent == 1


def test_a_set_many_publishes_in_its_pipeline():
    scope = plan_scope(invalidation="pubsub")
    write = Stepper(plans.set_many(scope, {"a": 1, "b": 2}, None))
    request = write.request
    assert isinstance(request, Pipeline) and request.op == "set_many"
    *sets, publish = request.commands
    assert [type(command) for command in sets] == [Set, Set] and isinstance(publish, Publish)
    write.send([True, True, 1])
    assert write.result is True and scope.shared.stats.invalidations_sent == 1


def test_expire_rewrites_the_header_deadline_with_the_ttl(scope):
    change = Stepper(plans.expire(scope, "k", 5))
    request = change.request
    assert isinstance(request, Eval) and request.keys == (b"tc:t:k",)
    px, deadline, window, now_ms = request.args
    assert px == 5000 and len(deadline) == 8 and window == 0  # no stale window
    assert abs(now_ms - time.time() * 1000) < 60_000  # the caller's clock, to tell a stale value
    change.send(1)
    assert change.result is True


def test_incr_creates_a_counter_with_the_ttl_in_one_transaction(scope):
    count = Stepper(plans.incr(scope, "n", 3, 7))
    request = count.request
    assert isinstance(request, Pipeline) and request.transaction
    assert request.commands == (Set(b"tc:t:n", 0, 7000, nx=True), IncrBy(b"tc:t:n", 3))
    count.send([True, 3])
    assert count.result == 3


def test_clear_scans_unlinks_and_empties_l1(scope):
    scope.shared.l1.set("a", 1)
    clear = Stepper(plans.clear(scope))
    assert clear.request == Scan(0, b"tc:t:*", 1000)
    assert clear.send((17, [b"tc:t:a"])) == Unlink((b"tc:t:a",))
    assert clear.send(1) == Scan(17, b"tc:t:*", 1000)
    clear.send((0, []))
    assert clear.result is True and len(scope.shared.l1) == 0


def test_ttl_reads_redis_pttl_or_the_logical_expiry(scope):
    now_ms = int(time.time() * 1000)
    extended = HEADER_EXT.pack(MSGPACK | EXTENDED, now_ms + 2000, 10)
    for reply, expected in (
        ([-2], None),
        ([-1, b"\x10" + bytes(8)], math.inf),
        ([1500, b"15"], 1.5),
        ([9000, extended], 2.0),  # Redis keeps it for a stale window: its TTL ends earlier
        ([9000, HEADER_EXT.pack(MSGPACK | EXTENDED, now_ms - 1, 10)], None),  # past it: gone
    ):
        ask = Stepper(plans.ttl(scope, "k"))
        assert isinstance(ask.request, Eval) and ask.request.script == plans.PEEK
        ask.send(reply)
        assert ask.result == pytest.approx(expected, abs=0.05) if expected else ask.result == expected


# -- the subscriber ------------------------------------------------------------------------------


def subscribed(channel):
    return {"type": "subscribe", "channel": channel, "data": 1, "pattern": None}


def test_the_subscriber_opens_l1_once_its_subscription_is_confirmed():
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    sh.gate.open = False
    state = sh.subscriber_state()
    loop = Stepper(invalidation.subscribe(sh, state))
    assert loop.request == Subscribe((sh.channel,))
    assert loop.send(None) == Receive(invalidation.POLL)
    assert loop.send(None) == Receive(invalidation.POLL)  # nothing yet: L1 stays shut
    assert not sh.gate.open
    assert loop.send(subscribed(sh.channel)) == Ready(True)
    assert sh.gate.open and state.connected


def test_the_subscriber_applies_other_origins_messages():
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    state = sh.subscriber_state()
    loop = Stepper(invalidation.subscribe(sh, state))
    loop.send(None)
    loop.send(subscribed(sh.channel))
    loop.send(None)  # Ready(True) acknowledged
    sh.l1.set("k", "old")
    other = invalidation.Publisher(sh.channel)
    loop.send({"type": "message", "channel": sh.channel, "data": other.keys_message([b"tc:t:k"])})
    assert "k" not in sh.l1 and sh.stats.invalidations_received == 1
    sh.l1.set("k", "mine")
    own = sh.publisher.keys_message([b"tc:t:k"])
    loop.send({"type": "message", "channel": sh.channel, "data": own})
    assert sh.l1.get("k") == "mine"  # its own messages are ignored


def test_a_lost_connection_shuts_l1_backs_off_and_reconnects():
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    loop = Stepper(invalidation.subscribe(sh, sh.subscriber_state()))
    loop.send(None)
    loop.send(subscribed(sh.channel))
    loop.send(None)
    sh.l1.set("k", 1)
    assert loop.throw(ConnectionError("reset by peer")) == Ready(False)
    assert not sh.gate.open and len(sh.l1) == 0
    assert loop.send(None) == Do.DISCONNECT
    assert loop.send(None) == Sleep(invalidation.MIN_BACKOFF)
    assert loop.send(None) == Subscribe((sh.channel,))
    assert loop.throw(ConnectionError("refused")) == Ready(False)
    loop.send(None)
    assert loop.send(None) == Sleep(2 * invalidation.MIN_BACKOFF)  # backing off
    assert sh.stats.reconnects == 2 and sh.stats.flushes["disconnect"] == 1


def test_a_silent_connection_is_given_up(monkeypatch):
    scope = plan_scope(invalidation="pubsub", heartbeat=1.0, max_silence=3.0)
    sh = scope.shared
    now = [100.0]
    monkeypatch.setattr(invalidation.time, "monotonic", lambda: now[0])
    loop = Stepper(invalidation.subscribe(sh, sh.subscriber_state()))
    loop.send(None)
    loop.send(subscribed(sh.channel))
    loop.send(None)
    now[0] += 1.5
    assert loop.send(None) == Do.PING  # the heartbeat is due
    loop.send(None)
    now[0] += 2.0  # 3.5 s since anything was heard
    assert loop.send(None) == Ready(False)
    assert sh.stats.flushes["silence"] == 1


# -- repairs: a write-through Redis missed ---------------------------------------------------


@pytest.fixture
def through():
    """A cache with a writer (write-through) and the bus on."""
    written = []
    return plan_scope("t", writer=lambda key, value: written.append((key, value)), invalidation="pubsub"), written


def set_through(scope, key, value):
    """Step a set past its writer call; returns the stepper at the Redis round trip."""
    write = Stepper(plans.set(scope, key, value, None))
    call = write.request
    assert isinstance(call, Call)
    call.func(*call.args)
    write.send(None)
    return write


@pytest.mark.parametrize(
    "failure", [CacheUnavailable("no answer"), RedisReplyError("READONLY")], ids=["no-answer", "refused"]
)
def test_a_write_through_redis_missed_is_repaired_when_redis_answers(through, failure):
    scope, written = through
    sh = scope.shared
    write = set_through(scope, "k", "new")
    write.throw(failure)
    assert write.result is False and written == [("k", "new")]
    assert sh.repairs.pending == 1
    read = Stepper(plans.get(scope, "k", None))  # Redis still has the old value...
    read.send(encoded(scope, "k", "old"))
    assert read.result == "old" and "k" not in sh.l1  # ...which this process must not keep
    repair = Stepper(plans.repair(scope))
    request = repair.request
    assert isinstance(request, Pipeline) and request.op == "repair"
    delete, publish = request.commands
    assert delete == Delete((b"tc:t:k",))
    assert msgpack.unpackb(publish.message)[4] == [b"tc:t:k"]  # every process drops it
    repair.send([1, 1])
    assert (sh.repairs.pending, sh.repairs.done) == (0, 1)
    read = Stepper(plans.get(scope, "k", None))
    read.send(encoded(scope, "k", "reloaded"))
    assert sh.l1.get("k") == "reloaded"  # L1 may keep the key again


def test_a_cancelled_write_through_is_repaired(through):
    scope, _ = through
    write = set_through(scope, "k", "new")
    with pytest.raises(KeyboardInterrupt):
        write.throw(KeyboardInterrupt())
    assert scope.shared.repairs.pending == 1


def test_a_repair_redis_does_not_answer_stays_scheduled(through):
    scope, _ = through
    set_through(scope, "k", "new").throw(CacheUnavailable("no answer"))
    repair = Stepper(plans.repair(scope))
    repair.throw(CacheUnavailable("still no answer"))
    assert repair.done and scope.shared.repairs.pending == 1
    assert Stepper(plans.repair(scope)).request is not None  # tried again next time


def test_a_later_write_of_the_key_is_its_repair(through):
    scope, _ = through
    set_through(scope, "k", "new").throw(CacheUnavailable("no answer"))
    set_through(scope, "k", "newer").send([True, 1])
    assert scope.shared.repairs.pending == 0
    assert Stepper(plans.repair(scope)).done  # nothing left to do


def test_a_failed_write_without_a_writer_needs_no_repair(scope):
    Stepper(plans.set(scope, "k", "v", None)).throw(CacheUnavailable("no answer"))
    assert scope.shared.repairs.pending == 0  # Redis, the only copy, kept its old value


# -- hostile publishers: bounded work, then a flush -------------------------------------------


def subscribed_loop(scope):
    sh = scope.shared
    state = sh.subscriber_state()
    loop = Stepper(invalidation.subscribe(sh, state))
    loop.send(None)
    loop.send(subscribed(sh.channel))
    loop.send(None)
    return loop, state


def message(sh, fields):
    return {"type": "message", "channel": sh.channel, "data": msgpack.packb(fields)}


def test_messages_that_would_queue_unbounded_work_flush_l1_instead():
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    loop, state = subscribed_loop(scope)
    origin = b"o" * 16
    sh.l1.set("k", 1)
    huge = [b"tc:t:x%d" % i for i in range(invalidation.MAX_PENDING + 1)]
    loop.send(message(sh, [invalidation.VERSION, origin, 1, invalidation.KEYS, huge]))
    assert len(sh.l1) == 0 and sh.stats.flushes["overflow"] == 1
    for start in range(0, 3 * invalidation.MAX_GAP, invalidation.MAX_GAP - 1):  # gaps just under a loss
        sh.l1.set("k", 1)
        loop.send(message(sh, [invalidation.VERSION, origin, start + invalidation.MAX_GAP - 1, invalidation.KEYS, []]))
    assert state.missing_count <= invalidation.MAX_PENDING
    assert sh.stats.flushes["overflow"] >= 2 and "k" not in sh.l1


@pytest.mark.parametrize(
    "fields",
    [[1, b"o" * 16, "seq", 1, []], [1, b"o" * 16, 1, 1, b"not a list"], [1, "origin", 1, 1, []], [1, b"o" * 16]],
    ids=["seq", "payload", "origin", "short"],
)
def test_malformed_messages_are_counted_not_raised(fields):
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    loop, state = subscribed_loop(scope)
    assert loop.send(message(sh, fields)) == Receive(invalidation.POLL)  # still listening
    assert sh.stats.bad_messages == 1 and state.connected


# -- the fleet-wide load lease -----------------------------------------------------------------


@pytest.fixture
def leased():
    return plan_scope("t", lease=True, lease_ttl=1.0)


def start_load(scope, loader):
    outer = Stepper(plans.get_or_load(scope, "k", loader, 60))
    load = Stepper(outer.request.plan)
    return load


def test_a_miss_takes_the_lease_loads_and_fills_while_it_holds_it(leased):
    load = start_load(leased, lambda key: "loaded")
    ask = load.request
    assert isinstance(ask, Eval) and ask.op == "get_or_lease" and ask.keys == (b"tc:t:k", b"tc:t:@:k")
    token = ask.args[0]
    call = load.send([2])  # the lease is ours
    assert isinstance(call, Call)
    fill = load.send("loaded")
    assert isinstance(fill, Eval) and fill.op == "fill_leased" and fill.args[0] == token
    load.send(1)
    assert load.result == "loaded" and leased.shared.l1.get("k") == "loaded"
    assert leased.shared.stats.leases == 1


def test_a_waiter_polls_until_the_value_lands_and_never_loads(leased):
    load = start_load(leased, lambda key: pytest.fail("a waiter must not load"))
    pauses = []
    request = load.send([3, 900])  # someone else holds the lease
    while isinstance(request, Pause):
        pauses.append(request.seconds)
        request = load.send(None)
        if len(pauses) == 4:
            break
    assert pauses == sorted(pauses) and pauses[0] == 0.002  # backing off
    load.send([1, encoded(leased, "k", "theirs")])
    assert load.result == "theirs" and leased.shared.stats.lease_waits == 1


def test_a_waiter_loads_itself_once_the_wait_passes_the_lease_ttl():
    scope = plan_scope("t", lease=True, lease_ttl=0.01)
    load = start_load(scope, lambda key: "mine")
    request = load.send([3, 10])
    while isinstance(request, (Pause, Eval)):
        request = load.send(None if isinstance(request, Pause) else [3, 10])
    assert isinstance(request, Call)  # the holder seems stuck: load without the lease
    stored = load.send("mine")
    assert isinstance(stored, Eval) and stored.script == FILL_UNLEASED
    load.send(1)
    assert load.result == "mine" and scope.shared.stats.lease_timeouts == 1


def test_a_write_during_the_load_revokes_the_lease_and_the_fill(leased):
    load = start_load(leased, lambda key: "old row")
    load.send([2])
    write = Stepper(plans.delete(leased, ["k"], "delete"))
    assert write.request == Eval(plans.WRITE_ONE, (b"tc:t:k", b"tc:t:@:k"), (b"", b"", b"DEL"), "delete")
    write.send(1)
    load.send("old row")
    load.send(0)  # FILL_IF_LEASED: the lease is gone
    assert load.result == "old row" and "k" not in leased.shared.l1
    assert leased.shared.stats.leased_fills_refused == 1


def test_a_failing_loader_releases_its_lease(leased):
    load = start_load(leased, lambda key: 1)
    load.send([2])
    release = load.throw(LookupError("no row"))
    assert isinstance(release, Eval) and release.op == "release_lease"
    with pytest.raises(LookupError):
        load.send(1)


@pytest.mark.parametrize("loaded", [None, object()], ids=["none-not-cached", "unserializable"])
def test_a_load_that_stores_nothing_releases_its_lease(leased, loaded):
    load = start_load(leased, lambda key: loaded)
    load.send([2])
    if loaded is None:
        release = load.send(None)
        assert isinstance(release, Eval) and release.op == "release_lease"
        load.send(1)
        assert load.done and load.result is None
    else:
        release = load.send(loaded)
        assert isinstance(release, Eval) and release.op == "release_lease"
        with pytest.raises(TypeError):
            load.send(1)


@pytest.mark.parametrize("payload", [[5], [None], [[b"x"]], [{"a": 1}]], ids=["int", "none", "list", "map"])
def test_keys_that_are_not_text_are_a_bad_message_not_a_lost_connection(payload):
    scope = plan_scope(invalidation="pubsub")
    sh = scope.shared
    loop, state = subscribed_loop(scope)
    assert loop.send(message(sh, [1, b"o" * 16, 1, invalidation.KEYS, payload])) == Receive(invalidation.POLL)
    assert sh.stats.bad_messages == 1 and sh.stats.reconnects == 0 and state.connected


def test_a_writer_that_fails_part_way_through_a_batch_repairs_what_it_took(through):
    scope, _ = through
    batch = Stepper(plans.set_many(scope, {"a": 1, "b": 2, "c": 3}, None))
    batch.send(None)  # writer took a
    with pytest.raises(LookupError):
        batch.throw(LookupError("the database refused b"))
    assert scope.shared.repairs.pending == 1  # a: the source has it, Redis does not
    assert Stepper(plans.repair(scope)).request.commands[0] == Delete((b"tc:t:a",))


def test_expire_or_incr_is_no_repair(through):
    scope, _ = through
    set_through(scope, "k", "new").throw(CacheUnavailable("no answer"))
    Stepper(plans.expire(scope, "k", 60)).send([1, 1])
    assert scope.shared.repairs.pending == 1  # the stale value is still there to mend


def test_a_value_the_script_found_fresh_is_served_even_if_it_expires_on_the_way_back(leased):
    """GET_OR_LEASE judges the logical expiry at the reader's clock as it sends; judged again
    later, a value that expired on the way back would be a miss with no lease (a full load,
    outside the fleet's single flight)."""
    load = start_load(leased, lambda key: "loaded")
    now_ms = load.request.args[2]
    data = leased.shared.codec.encode("cached", b"tc:t:k", 1, 0)  # extended header, 1 ms to live
    data = data[:1] + (now_ms + 1).to_bytes(8, "big") + data[9:]
    time.sleep(0.005)  # it has expired by the time the answer is read
    load.send([1, data])
    assert load.result == "cached"
