"""The load lease: one loader call per key in the whole fleet (invariant 10).

A miss asks Redis, in one round trip, for the value or the key's lease (GET_OR_LEASE). The
process that gets the lease runs the loader and stores the result only if it still holds
the lease (FILL_IF_LEASED); every write of the key deletes the lease in the pipeline that
writes it, so a value loaded from the source of truth before a write can never be stored
after it (the resurrection of a deleted key). The others wait, polling with backoff, and
read the value when it lands; they load themselves only when the lease expires (its holder
died: `lease_ttl`) or their wait passes the same bound. Nobody but its holder deletes a
lease (RELEASE checks the token).

The lease of a key lives at KeyCodec.lease_key: beside the data, never equal to any key.
"""

from __future__ import annotations

import itertools
import os
from typing import Final

from ..codec import EXTENDED, HEADER_EXT, HEADER_FORMATS

# KEYS: data key, lease key. ARGV: token, lease PX, the reader's clock (unix ms), how long past
# its logical expiry the reader may serve a value (its longer stale window, ms).
# {1, value} if the key holds a value (fresh, or with no logical expiry); {2} if it holds
# none and this caller now holds the lease; {3, ms left} if someone else does. A value with
# the extended header past its logical expiry (core/freshness.py) is stale: {4, value} if
# this caller now holds the lease, {5, value, the lease} if someone else does. A lease that is
# only a failure mark (FAILED) is taken over by a reader that cannot serve the stale value
# meanwhile (or when nothing stale is left): the mark holds off only those who serve it.
# expiry(value): the logical deadline of a value with the extended header (nil for any other
# value, 0 for none); stale(value, now): whether it is past it at now.
_STALE: Final = f"""
local function expiry(value)
  local format = string.byte(value, 1)
  local headed = {{{", ".join(f"[{fmt}] = true" for fmt in sorted(HEADER_FORMATS))}}}
  if not (headed[format] and bit.band(format, {EXTENDED}) ~= 0 and string.len(value) >= {HEADER_EXT.size}) then
    return nil
  end
  local deadline = 0
  for i = 2, 9 do deadline = deadline * 256 + string.byte(value, i) end
  return deadline
end
local function stale(value, now)
  local deadline = expiry(value)
  return deadline ~= nil and deadline ~= 0 and deadline <= now
end
"""

GET_OR_LEASE: Final = (
    _STALE
    + """
local now = tonumber(ARGV[3])
local value = redis.call('GET', KEYS[1])
if value then
  if not stale(value, now) then return {1, value} end
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {4, value} end
  local held = redis.call('GET', KEYS[2])
  if held and string.sub(held, 1, 1) == '!' and now - expiry(value) >= tonumber(ARGV[4]) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])  -- a failure mark this reader cannot wait out
    return {4, value}
  end
  return {5, value, held}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
local held = redis.call('GET', KEYS[2])
if held and string.sub(held, 1, 1) == '!' then  -- a failure mark, and nothing stale left to serve
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {3, redis.call('PTTL', KEYS[2])}
"""
)

# KEYS: data key. ARGV: data, PX or "", the caller's clock (unix ms). A load stored without a
# lease (lease=False): like SET NX (a write that landed while it loaded is newer), except that
# a value past its logical expiry, kept only for a stale window, is replaced. 1 if stored.
FILL_UNLEASED: Final = (
    _STALE
    + """
local value = redis.pcall('GET', KEYS[1])
if type(value) == 'table' and value.err then return 0 end  -- another type lives there: as SET NX
if value then
  local clock = redis.call('TIME')  -- stale by the caller's clock and by Redis's: a fast clock
  local now = math.min(tonumber(ARGV[3]), clock[1] * 1000 + math.floor(clock[2] / 1000))
  if not stale(value, now) then return 0 end  -- (never overwrites a fresh write)
end
if ARGV[2] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 1
"""
)

# KEYS: lease key. ARGV: token, PX. The caller's lease, kept PX more and marked "!" as a sign
# that the source failed: a reader of a stale value serves it meanwhile instead of loading
# (stale_if_error), so a failing source is asked once per FAILURE_BACKOFF in the fleet.
FAILED: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], '!' .. ARGV[1], 'PX', ARGV[2]) end"
    " return 0"
)
FAILURE_BACKOFF_MS: Final = 1000

# KEYS: lease key. ARGV: token, lease PX. 1 if this caller now holds the lease (a refresh).
TAKE: Final = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end return 0"

# KEYS: data key, lease key. ARGV: token, data, PX or "", and for a refresh, the SHA-1 of the
# value it replaces ("" for a load of a missing key: SET NX). A refresh stores only over that
# very value: a writer that revokes no lease (a cache with lease=False) may have changed or
# deleted it meanwhile. Data "" deletes that value instead (the source has nothing to keep).
# 1 if done; 0 if the lease was revoked by a write (or expired), or the value changed. Out of
# memory, Redis stops it at its SET with the lease already deleted: harmless (README: the
# rule for Lua scripts), the value is simply not stored and the next reader loads again.
FILL_IF_LEASED: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] ~= '' then
  local current = redis.call('GET', KEYS[1])
  if not current or redis.sha1hex(current) ~= ARGV[4] then return 0 end
  if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
  if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
  return 1
end
local stored
if ARGV[3] == '' then
  stored = redis.call('SET', KEYS[1], ARGV[2], 'NX')
else
  stored = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'NX')
end
if stored then return 1 end
return 0
"""

# KEYS: lease key. ARGV: token. Deletes the lease only if the caller holds it.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

FIRST_POLL: Final = 0.002  # seconds a waiter waits before asking again; doubling...
LAST_POLL: Final = 0.1  # ...up to this


class Tokens:
    """Lease tokens unique in the fleet: this process's random prefix and a counter."""

    def __init__(self) -> None:
        # Never starting with "!", which marks a failed load (FAILED): a random first byte
        # would be one 1 time in 256, and its waiters would take a live lease over.
        self._prefix = b"L" + os.urandom(11)
        self._counter = itertools.count()

    def next(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")
