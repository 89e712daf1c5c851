"""Tags: a key written with tags=[...] is removed, in Redis and every process's L1, by
invalidate_tags(tags) (both drivers).

How membership is stored (KeyCodec.tag_key, tag_index):

* A tag of a namespace is a sorted set at ``{namespace}%T{tag}``: its members are the Redis
  keys written with the tag, each scored with the time (Redis's clock, ms) after which it may
  have expired (``+inf`` for a key with no TTL). The namespace's tag index,
  ``{namespace}%I``, scores each of its tag sets with the highest score in it.
* A tagged write registers its keys in the same MULTI as the SET, so invalidate_tags never
  sees one without the other; the registration comes first, so a refused SET leaves at most a
  member with nothing behind it (harmless), never a value its tag does not know.
* Nothing is trusted to a score alone: a member whose score has passed is looked at (PTTL)
  and dropped if its key is gone, or scored again if expire() lengthened its life. Each
  tagged write does this for the tags it writes and for up to SWEEP other tag sets of the
  namespace whose every member may have expired, which are deleted when empty. So a tag set
  holds live keys plus those expired since its last write, and tags no longer written are
  swept by later tagged writes. A tag set has no TTL of its own: a key kept alive by
  expire() stays findable.
* A key rewritten without a tag stays a member of it until the tag is invalidated or the key
  is gone: invalidate_tags may then remove it too (a cache may drop more, never keep less).

The scripts read the keys of tag sets they were not given (PTTL of members, the sweep), which
a standalone Redis allows; Redis Cluster would need the namespace's keys in one slot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from .requests import Eval, Plan

BATCH: Final = 500  # keys removed per script call of invalidate_tags
SWEEP: Final = 4  # other tag sets a tagged write looks at

# The body both scripts share: settle(set) drops the members of a tag set whose score has
# passed and whose key is gone, scores again those still alive, then files the set in the
# index under its highest score, or deletes it when empty. (The score is when the member may
# have expired, by Redis's clock.)
_SETTLE: Final = """
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)
local function settle(index, set)
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, 100)
  for _, member in ipairs(due) do
    local left = redis.call('PTTL', member)
    if left == -2 then
      redis.call('ZREM', set, member)
    elseif left == -1 then
      redis.call('ZADD', set, '+inf', member)
    else
      redis.call('ZADD', set, now + left, member)
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

# KEYS: the tag index, then the tag sets. ARGV: the keys' TTL in ms ('' for none), then the
# tagged Redis keys.
TAG: Final = (
    _SETTLE
    + """
local score = ARGV[1] == '' and '+inf' or (now + tonumber(ARGV[1]))
for i = 2, #KEYS do
  for j = 2, #ARGV do
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

# KEYS: a tag set. ARGV: how many members. Returns its size and up to that many members.
MEMBERS: Final = "return {redis.call('ZCARD', KEYS[1]), redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)}"

# KEYS: the tag index, a tag set, then members of it. Removes them from the set and deletes
# their keys (how many existed); files or deletes the set.
DROP: Final = (
    _SETTLE
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


def registration(scope: Any, tags: tuple[str, ...], rkeys: list[bytes], ttl_ms: int | None) -> Eval:
    """The command that files rkeys (written with ttl_ms) under tags, sent in the write's
    MULTI before the SETs."""
    codec = scope.keys
    keys = (codec.tag_index, *(codec.tag_key(tag) for tag in tags))
    return Eval(TAG, keys, (b"" if ttl_ms is None else b"%d" % ttl_ms, *rkeys), "tag")


def members(scope: Any, tag: str) -> Plan[tuple[int, list[bytes]]]:
    """How many keys are filed under tag, and up to BATCH of them."""
    held, found = yield Eval(MEMBERS, (scope.keys.tag_key(tag),), (BATCH,), "invalidate_tags")
    return int(held), [bytes(member) for member in found]


def dropping(scope: Any, tag: str, rkeys: list[bytes]) -> Eval:
    """The command that removes rkeys from tag's set and deletes them."""
    codec = scope.keys
    return Eval(DROP, (codec.tag_index, codec.tag_key(tag), *rkeys), (), "invalidate_tags")
