"""Tags: a key written with tags=[...] is removed, in Redis and every process's L1, by
invalidate_tags(tags) (both drivers).

How membership is stored (KeyCodec.tag_key, tag_index):

* A tag of a namespace is a sorted set at ``{namespace}%T{tag}``: its members are the Redis
  keys written with the tag, each scored with when to look at it again (Redis's clock, ms):
  when its key expires, and at the latest RECHECK_MS (an hour) from now, because a delete,
  or an expire() that shortens a key's life, does not tell the key's tags. The namespace's
  tag index, ``{namespace}%I``, scores each of its tag sets with the highest score in it.
* A tagged write registers its keys in the same MULTI as the SET, so invalidate_tags never
  sees one without the other; the registration comes first, so a refused SET leaves at most a
  member with nothing behind it (harmless), never a value its tag does not know.
* Nothing is trusted to a score alone: a member whose score has passed is looked at (PTTL)
  and dropped if its key is gone, or scored again if it lives on. Each
  tagged write does this for the tags it writes and for up to SWEEP other tag sets of the
  namespace whose every member may have expired, which are deleted when empty. So a tag set
  holds live keys plus those expired since its last write, and tags no longer written are
  swept by later tagged writes. A tag set has no TTL of its own: a key kept alive by
  expire() stays findable.
* A key rewritten without a tag stays a member of it until the tag is invalidated or the key
  is gone: invalidate_tags may then remove it too (a cache may drop more, never keep less).

* invalidate_tags walks a tag set with ZSCAN (tags.MEMBERS), which returns every member
  present from its first step to its last, however many are added meanwhile.
* Tag sets and the index have no TTL, so a volatile-* maxmemory-policy never evicts them; an
  allkeys-* policy can evict a tag set while its keys live on, and invalidate_tags then
  misses them (README: Tags).

The scripts read keys they were not given (PTTL of members, the sweep's other tag sets),
which Redis allows when they are in the script's slot. So on Redis Cluster (KeyCodec.sharded)
a tag has one tag set per hash slot, ``%T{TTT}tag``, holding the tagged keys of that slot,
with that slot's index ``%I{TTT}``; and ``%D`` + tag, the tag's slot set, lists the slot tags
TTT under which the tag has a tag set:

* A tagged write adds its slots to the slot set first (TAG_SLOTS), then files each slot's
  keys in that slot's MULTI with their SETs, so invalidate_tags, which reads the slot set
  and walks each slot's tag set, finds every key written before it began.
* The slot set is never shrunk (a slot taken out while a write was filing a key there would
  hide the key): it holds at most the slots the tag's keys ever had. It expires RECHECK_MS
  after the longest-lived key filed under it would (never, while one has no TTL). A key whose
  TTL expire() lengthens past that is no longer found by invalidate_tags (README: Cluster).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ..codec import key_slot, slot_tag
from .requests import Command, Eval, Plan

BATCH: Final = 500  # keys removed per script call of invalidate_tags (a ZSCAN step's COUNT)
SWEEP: Final = 4  # other tag sets a tagged write looks at
RECHECK_MS: Final = 3_600_000  # a member is looked at again at least this often (ms)

# The body both scripts share: settle(set) drops the members of a tag set whose score has
# passed and whose key is gone, scores again those still alive, then files the set in the
# index under its highest score, or deletes it when empty. (A member's score is when to look
# at it again, by Redis's clock: when its key expires, and at the latest RECHECK_MS from
# now, since a delete, or an expire() that shortens its life, does not tell its tags.)
_SETTLE: Final = """
local recheck = tonumber(ARGV[RECHECK_AT])
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local function settle(index, set)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local left = redis.call('PTTL', member)
    if left == -2 then
      redis.call('ZREM', set, member)
    else
      redis.call('ZADD', set, now + ((left == -1 or left > recheck) and recheck or left), member)
    end
  end
  local top = redis.call('ZRANGE', set, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('ZADD', index, top[2], set)
  else
    redis.call('ZREM', index, set)
  end
end
"""

# KEYS: the tag index, then the tag sets. ARGV: the keys' TTL in ms ('' for none), RECHECK_MS,
# then the tagged Redis keys.
TAG: Final = (
    _SETTLE.replace("RECHECK_AT", "2")
    + """
local ttl = ARGV[1] == '' and recheck or math.min(tonumber(ARGV[1]), recheck)
local score = now + ttl
for i = 2, #KEYS do
  for j = 3, #ARGV do
    redis.call('ZADD', KEYS[i], score, ARGV[j])
  end
  settle(KEYS[1], KEYS[i])
end
local overdue = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV_SWEEP)
for _, set in ipairs(overdue) do
  settle(KEYS[1], set)
end
return 1
""".replace("ARGV_SWEEP", str(SWEEP))
)

# KEYS: a tag set. ARGV: a ZSCAN cursor, the step's COUNT. Returns the next cursor and members.
# ZSCAN returns every member present from the first step to the last (one removed meanwhile
# is gone, or was deleted by another invalidation), however many are added meanwhile, which
# a walk by rank or score would not: new members can sort ahead of old ones forever.
MEMBERS: Final = """
local step = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local members = {}
for i = 1, #step[2], 2 do
  members[#members + 1] = step[2][i]
end
return {step[1], members}
"""

# KEYS: the tag index, a tag set, then members of it. ARGV: RECHECK_MS. Removes them from the
# set and deletes their keys (how many existed); files or deletes the set.
DROP: Final = (
    _SETTLE.replace("RECHECK_AT", "1")
    + """
redis.call('ZREM', KEYS[2], unpack(KEYS, 3))
local removed = redis.call('UNLINK', unpack(KEYS, 3))
settle(KEYS[1], KEYS[2])
return removed
"""
)


def check_tags(tags: Any) -> tuple[str, ...]:
    """tags as a tuple of distinct non-empty str (in their first order); TypeError or
    ValueError naming what is wrong."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise TypeError(f"tags must be a list of str, got {type(tags).__name__}")
    checked: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"each tag must be a str, got {type(tag).__name__}: {tag!r}")
        if not tag:
            raise ValueError("a tag must be a non-empty str")
        try:
            tag.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"a tag must be valid text (no lone surrogates), got {tag!r}") from None
        checked[tag] = None
    return tuple(checked)


# On Cluster. KEYS: a tag's slot set. ARGV: how long it must live at least, in ms ('' for
# ever), then slot tags. Adds them; the set lives as long as its longest-lived key may.
TAG_SLOTS: Final = """
local before = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
if ARGV[1] == '' then
  if before ~= -1 then redis.call('PERSIST', KEYS[1]) end
elseif before ~= -1 and before < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


def registration(scope: Any, tags: tuple[str, ...], rkeys: list[bytes], ttl_ms: int | None) -> tuple[Command, ...]:
    """The commands that file rkeys (written with ttl_ms) under tags, sent in the write's
    MULTI before the SETs (on Cluster: the tags' slot sets first, then one filing per slot,
    each to go in its slot's MULTI)."""
    codec = scope.keys
    ttl = b"" if ttl_ms is None else b"%d" % ttl_ms
    if not codec.sharded:
        keys = (codec.tag_index(), *(codec.tag_key(tag) for tag in tags))
        return (Eval(TAG, keys, (ttl, RECHECK_MS, *rkeys), "tag"),)
    by_slot: dict[int, list[bytes]] = {}
    for rkey in rkeys:
        by_slot.setdefault(key_slot(rkey), []).append(rkey)
    lives = b"" if ttl_ms is None else b"%d" % (ttl_ms + RECHECK_MS)
    slot_tags = tuple(slot_tag(slot) for slot in by_slot)
    commands: list[Command] = [Eval(TAG_SLOTS, (codec.tag_slots(tag),), (lives, *slot_tags), "tag") for tag in tags]
    for slot, mine in by_slot.items():
        keys = (codec.tag_index(slot), *(codec.tag_key(tag, slot) for tag in tags))
        commands.append(Eval(TAG, keys, (ttl, RECHECK_MS, *mine), "tag"))
    return tuple(commands)


def slots(scope: Any, tag: str) -> Plan[list[int]]:
    """The slots in which tag has a tag set: [0] (the only one) unless on Cluster."""
    codec = scope.keys
    if not codec.sharded:
        return [0]
    found = yield Eval("return redis.call('SMEMBERS', KEYS[1])", (codec.tag_slots(tag),), (), "invalidate_tags")
    return sorted(key_slot(b"{" + bytes(slot_tag) + b"}") for slot_tag in found)


def members(scope: Any, tag: str, slot: int, cursor: int) -> Plan[tuple[int, list[bytes]]]:
    """One step of a walk over the keys filed under tag (in slot, on Cluster): the next
    cursor (0: done) and about BATCH keys (a key may come twice)."""
    cursor, found = yield Eval(MEMBERS, (scope.keys.tag_key(tag, slot),), (cursor, BATCH), "invalidate_tags")
    return int(cursor), [bytes(member) for member in found]


def dropping(scope: Any, tag: str, slot: int, rkeys: list[bytes]) -> Eval:
    """The command that removes rkeys (of slot, on Cluster) from tag's set and deletes them."""
    codec = scope.keys
    keys = (codec.tag_index(slot), codec.tag_key(tag, slot), *rkeys)
    return Eval(DROP, keys, (RECHECK_MS,), "invalidate_tags")
