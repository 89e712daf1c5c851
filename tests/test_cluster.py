"""Redis Cluster and Sentinel without a server where it can be: hash slots and slot tags,
the keys a script pairs with a key, URLs, and the cluster-safe steps of core/sharding.py
stepped by hand. (On real clusters: the contract tests with l2_kind, test_cluster_faults.)"""

from __future__ import annotations

import asyncio
import random

import pytest
from redis.crc import key_slot as redis_key_slot

from tiercache import TieredCache, clients
from tiercache.codec import SLOTS, KeyCodec, key_slot, slot_tag
from tiercache.core import requests as rq
from tiercache.core import sharding
from tiercache.core.resilience import RedisErrors
from tiercache.core.shared import Shared


def _random_keys(count, seed=1):
    rng = random.Random(seed)
    alphabet = b"ab{}:%@\x00\xff"
    return [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(count)]


def test_key_slot_agrees_with_redis_py_on_keys_full_of_braces():
    for key in [b"", b"{", b"}", b"{}", b"{}a", b"a{b}c", b"a{}{b}", b"{{a}}", *_random_keys(5000)]:
        assert key_slot(key) == redis_key_slot(key), key


def test_every_slot_has_a_three_letter_tag_that_hashes_to_it():
    for slot in range(SLOTS):
        tag = slot_tag(slot)
        assert len(tag) == 3 and tag.isalnum()
        assert redis_key_slot(b"x{" + tag + b"}y") == slot


@pytest.mark.parametrize("path", [(), ("tenant", "a")])
def test_a_lease_and_a_tag_set_live_in_their_keys_slot(path):
    codec = KeyCodec("tc", "users", path, sharded=True)
    for user_key in ["user:1", "{user:1}:name", "}{", "{}x", "a{", "@odd", "%odd", b"\x00{b}", b"}"]:
        rkey = codec.redis_key(user_key)
        slot = key_slot(rkey)
        lease = codec.lease_key(rkey)
        assert key_slot(lease) == slot and codec.leased_key(lease) == rkey
        assert key_slot(codec.tag_key("t", slot)) == slot == key_slot(codec.tag_index(slot))
        with pytest.raises(ValueError, match="lease"):
            codec.parse(lease)


def test_one_redis_keeps_the_layout_it_had():
    codec = KeyCodec("tc", "users")
    rkey = codec.redis_key("user:1")
    assert codec.lease_key(rkey) == b"tc:users:@:user:1" and codec.leased_key(b"tc:users:@:user:1") == rkey
    assert codec.tag_key("t") == b"tc:users:%Tt" and codec.tag_index() == b"tc:users:%I"


def test_braces_in_a_clusters_names_are_refused_by_name():
    for prefix, name, path in (("t{c", "n", ()), ("tc", "{users}", ()), ("tc", "n", ("a}",))):
        with pytest.raises(ValueError, match="hash tag"):
            KeyCodec(prefix, name, path, sharded=True)
    KeyCodec("t{c", "{users}", ("a}",))  # one Redis: no hash tags, nothing to refuse
    with pytest.raises(ValueError, match="hash tag"):
        KeyCodec("tc", "n", sharded=True).child("{x}")


def test_tracking_is_refused_on_a_cluster():
    errors = RedisErrors(unavailable=(), reply=())
    with pytest.raises(ValueError, match="tracking.*Cluster"):
        Shared(name="n", errors=errors, sharded=True, invalidation="tracking")


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("redis+cluster://", "no hosts"),
        ("redis+cluster:///", "no hosts"),
        ("redis+cluster://h", "host:port"),
        ("redis+cluster://h:0", "port"),
        ("redis+cluster://h:70000", "port"),
        ("redis+cluster://h:1,,h:2", "empty host"),
        ("redis+cluster://h:1/3", "one database"),
        ("redis+cluster://h:1/?colour=red", "unknown option 'colour'"),
        ("redis+cluster://h:1/?socket_timeout=soon", "not a number"),
        ("redis+sentinel://h:1", "service"),
        ("redis+sentinel://h:1/svc/x", "database must be a number"),
        ("redis+sentinel://h:1/svc/0/more", "too many"),
        ("redis+shard://h:1", "unknown scheme"),
        ("redis+cluster://h:1#x", "fragment"),
        ("redis+cluster://h:\u0663", "port"),  # an Arabic-Indic three is no port
        ("redis+sentinel://h:1/svc/99999999999999999999", "database"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url, what):
    with pytest.raises(ValueError, match=what):
        TieredCache.from_url(url, name="n")


def test_options_may_follow_the_hosts_without_a_slash():
    for url in (
        "redis+cluster://u:p%40ss@h:1?socket_timeout=0.25",
        "redis+cluster://u:p%40ss@h:1/?socket_timeout=0.25",
    ):
        _, username, password, hosts, path, query = clients._split(url)
        assert (username, password, hosts, path) == ("u", "p@ss", [("h", 1)], [])
        assert clients._options(url, query) == {"socket_timeout": 0.25}


def test_a_scan_cursor_walks_every_master_in_turn():
    cursor, visited = 0, []
    for step in range(20):
        master, own = clients.scan_cursor(cursor)
        visited.append((master, own))
        answered = 0 if step % 3 == 2 else 1000 + step  # each master takes three steps
        cursor = clients.next_cursor(master, 3, answered)
        if cursor == 0:
            break
    assert [master for master, _ in visited] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [own for _, own in visited[:3]] == [0, 1000, 1001]


# -- core/sharding.py, stepped by hand ---------------------------------------------------------

UNAVAILABLE = (ConnectionError,)
SHARED = Shared(name="n", errors=RedisErrors(unavailable=UNAVAILABLE, reply=()), sharded=True)


def _keys_in_slots(count):
    """count keys, each in a slot of its own, and the slot of each."""
    keys, slots = [], set()
    for number in range(10 * count):
        key = b"k%d" % number
        if key_slot(key) not in slots:
            slots.add(key_slot(key))
            keys.append(key)
        if len(keys) == count:
            return keys
    raise AssertionError("not enough slots")


def _master(slot):
    return f"m{slot % 2}"


def test_an_mget_across_slots_is_one_pipeline_and_answers_in_order():
    keys = [*_keys_in_slots(4), b"{" + _keys_in_slots(1)[0] + b"}x"]
    step = rq.Stepper(sharding.carry(SHARED, rq.MGet(keys), _master))
    assert isinstance(step.request, rq.Pipeline) and not step.request.transaction
    parts = step.request.commands
    assert all(len({key_slot(key) for key in part.keys}) == 1 for part in parts)
    step.send([[b"v" + key for key in part.keys] for part in parts])
    assert step.result == [b"v" + key for key in keys]


def test_a_master_that_fails_an_mget_fails_only_its_keys():
    keys = _keys_in_slots(6)
    step = rq.Stepper(sharding.carry(SHARED, rq.MGet(keys), _master))
    step.throw(ConnectionError("a master is down"))  # redis-py's cluster pipeline fails whole
    answered = {}
    while not step.done:
        parts = step.request.commands
        master = {_master(key_slot(part.keys[0])) for part in parts}
        assert len(master) == 1  # one pipeline per master now
        if master == {"m0"}:
            step.throw(ConnectionError("m0 is down"))
        else:
            answered.update({key: b"v" for part in parts for key in part.keys})
            step.send([[b"v"] * len(part.keys) for part in parts])
    assert step.result == [b"v" if key in answered else None for key in keys]
    assert answered and len(answered) < len(keys)


def test_an_mget_that_every_master_fails_raises():
    step = rq.Stepper(sharding.carry(SHARED, rq.MGet(_keys_in_slots(4)), _master))
    step.throw(ConnectionError("down"))
    with pytest.raises(ConnectionError):
        while not step.done:
            step.throw(ConnectionError("down"))


def test_a_multi_is_one_per_slot_in_order_and_the_publish_goes_last():
    first, second = _keys_in_slots(2)
    commands = (
        rq.Eval("file", (b"{" + slot_tag(key_slot(second)) + b"}i",), ()),
        rq.Set(first, b"1", None),
        rq.Set(second, b"2", None),
        rq.Delete((first, second)),
        rq.Publish(b"chan", b"message"),
    )
    step = rq.Stepper(sharding.carry(SHARED, rq.Pipeline(commands, "set_many", transaction=True), _master))
    sent = []
    while isinstance(step.request, rq.Pipeline):
        assert step.request.transaction and len({sharding.slot_of(c) for c in step.request.commands}) == 1
        sent.append(step.request.commands)
        step.send([1] * len(step.request.commands))
    assert [len(group) for group in sent] == [3, 2]  # second's slot came first (the filing)
    assert step.request == rq.Publish(b"chan", b"message")
    step.send(1)
    assert step.result == [1, 1, 1, 2, 1]  # DEL's two parts summed, then the PUBLISH's reply


def test_a_write_that_stood_is_done_though_its_publish_failed():
    (key,) = _keys_in_slots(1)
    shared = Shared(name="n", errors=RedisErrors(unavailable=UNAVAILABLE, reply=()), sharded=True)
    request = rq.Pipeline((rq.Set(key, b"1", None), rq.Publish(b"chan", b"m")), "incrby", transaction=True)
    step = rq.Stepper(sharding.carry(shared, request, _master))
    step.send([True])
    step.throw(ConnectionError("the channel's node is down"))
    assert step.result == [True, 0]  # a caller that retried would apply an incr twice
    assert shared.stats.l2_errors == 1


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, asyncio.CancelledError])
def test_an_interrupted_write_is_announced_then_the_interruption_goes_on(interruption):
    (key,) = _keys_in_slots(1)
    request = rq.Pipeline((rq.Set(key, b"1", None), rq.Publish(b"chan", b"m")), "set")
    step = rq.Stepper(sharding.carry(SHARED, request, _master))
    step.throw(interruption())
    assert step.request == rq.Publish(b"chan", b"m")
    with pytest.raises(interruption):
        step.send(1)


def test_the_publish_goes_even_when_the_write_failed():
    (key,) = _keys_in_slots(1)
    request = rq.Pipeline((rq.Set(key, b"1", None), rq.Publish(b"chan", b"m")), "set")
    step = rq.Stepper(sharding.carry(SHARED, request, _master))
    step.throw(ConnectionError("the write's outcome is unknown"))
    assert step.request == rq.Publish(b"chan", b"m")
    with pytest.raises(ConnectionError, match="outcome"):
        step.throw(ConnectionError("and the publish failed too"))  # the write's error is what surfaces
