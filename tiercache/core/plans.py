"""Every TieredCache operation, written once for both drivers as a plan.

A plan is a generator that yields Requests (requests.py) and receives their results:
TieredCache carries each one out with blocking calls, AsyncTieredCache awaits it. A Redis
call that got no answer, or that the circuit breaker refused, is thrown into the plan as
CacheUnavailable; an error reply as RedisReplyError. So the rules of the cache (what a miss
counts, when L1 may be filled, what a failed write leaves behind) are written here once, and
tests can step a plan by hand (tiercache.testing.Stepper) to force any interleaving.

Two rules every plan follows:

* L1 changes only through the fill guard (guard.py): a read takes a token before it asks
  Redis and fills under it; a write wraps its round trip in begin_writes / end_writes.
* A write whose outcome is unknown (no answer, an error reply, cancelled) leaves no copy in
  L1 (invariant 9): end_writes is told ok=False and drops the keys; if the writer already
  changed the source of truth, the keys are scheduled for repair (repair.py).
* Every write deletes the written keys' load leases in its own round trip (write() adds
  it), and a load stores only while it holds its lease (invariant 10): a new kind of
  write goes through write(), or it must revoke the leases itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ..codec import EXPIRE_SCRIPT, EXTENDED, HEADER_EXT, expire_args, glob_escape, rebuild, ttl_until
from ..codec import freshness as freshness_of
from ..errors import CacheUnavailable, DecodeError, RedisReplyError
from ..local import MISSING
from . import tags as tagging
from .freshness import Freshness
from .lease import (
    FAILED,
    FAILURE_BACKOFF_MS,
    FILL_IF_LEASED,
    FILL_UNLEASED,
    FIRST_POLL,
    GET_OR_LEASE,
    LAST_POLL,
    RELEASE,
    TAKE,
)
from .requests import (
    KEEP_TTL,
    NO_CHANGE,
    PTTL,
    Background,
    Call,
    Command,
    Delete,
    Eval,
    Flight,
    Get,
    IncrBy,
    MGet,
    Pause,
    Pipeline,
    Plan,
    Publish,
    Scan,
    Set,
    Unlink,
    Update,
)
from .shared import Scope, Shared

if TYPE_CHECKING:
    from .invalidation import Publisher

_T = TypeVar("_T")


class _Deleted:
    """What a writer receives as the value when a key is deleted."""

    def __repr__(self) -> str:
        return "tiercache.DELETED"


DELETED: Any = _Deleted()


def _write_through(
    scope: Scope, pairs: list[tuple[Any, Any]], l1_keys: list[Hashable], rkeys: list[bytes]
) -> Plan[None]:
    """writer(key, value) for each pair, in order. If it raises part way, the keys it already
    took are scheduled for repair (their old values are still in Redis), then it raises."""
    writer = scope.shared.writer
    assert writer is not None
    taken = 0
    try:
        for key, value in pairs:
            yield Call(writer, (key, value))
            taken += 1
    except BaseException:
        if taken:
            scope.shared.repairs.schedule(l1_keys[:taken], rkeys[:taken])
        raise


def _write_failed(scope: Scope, what: str, failure: CacheUnavailable | RedisReplyError) -> None:
    """Count a write that did not land; with strict=True, raise why."""
    sh = scope.shared
    if isinstance(failure, RedisReplyError):
        reply = failure.__cause__ or failure  # the client's own exception says what Redis said
        sh.write_refused(what, reply)
        if sh.strict:
            raise RedisReplyError(f"cache {sh.name!r}: Redis refused {what}: {reply}") from failure
        return
    sh.stats.write_failures += 1
    if sh.strict:
        raise CacheUnavailable(f"cache {sh.name!r}: {what} did not reach Redis") from failure


# -- reads ------------------------------------------------------------------------------------


def read(scope: Scope, l1_key: Hashable, rkey: bytes) -> Plan[Any]:
    """Redis GET, decode, guarded L1 fill: the value, or MISSING.

    TieredCache._read_lean is this plan written out for the sync driver's common case: a
    change here is a change there."""
    token = scope.shared.guard.begin_read()
    try:
        data = yield Get(rkey)
    except (CacheUnavailable, RedisReplyError) as exc:
        return unread(scope.shared, rkey, exc)
    value, l1_ttl = landed(scope.shared, rkey, data)
    if l1_ttl is None:  # a plain integer carries no deadline: ask Redis (not a sub-plan on every read)
        l1_ttl = yield from l1_ttl_from_redis(scope, rkey)
    scope.shared.fill(l1_key, value, l1_ttl, token)
    return value


def unread(sh: Shared, rkey: bytes, failure: CacheUnavailable | RedisReplyError) -> Any:
    """A read of rkey that got no value: MISSING, counted as a decode error if Redis answered
    with an error reply (e.g. WRONGTYPE: something else lives there)."""
    if isinstance(failure, RedisReplyError):
        sh.decode_failed(rkey, failure.__cause__ or failure)
    return MISSING


def landed(
    sh: Shared, rkey: bytes, data: bytes | None, fresh: Freshness | None = None, now_ms: float | None = None
) -> tuple[Any, float | None]:
    """What Redis answered for rkey (None: nothing), counted: (MISSING, 0.0), or the value
    and its L1 ttl from the header's deadline (None: the bytes carry no deadline); for a
    value with the extended header, a point a refresh margin before it (fresh's beta, else
    the cache's, else XFetch's: Freshness.l1_ttl). now_ms: the moment the logical expiry is
    judged at (default: now; a script that already judged it passes its own)."""
    value, deadline = sh.decode_counted(data, rkey, now_ms)
    if value is MISSING:
        return MISSING, 0.0
    if deadline is None:
        return value, None
    if data is not None and data[0] & EXTENDED:
        extended = freshness_of(data)
        if extended is not None:
            return value, (fresh or sh.freshness).l1_ttl(deadline, extended[1], time.time() * 1000.0, sh.l1_ttl)
    return value, ttl_until(deadline, sh.l1_ttl, time.time() * 1000.0)


def l1_ttl_from_redis(scope: Scope, rkey: bytes) -> Plan[float]:
    """L1 ttl for a value whose bytes carry no deadline (a plain integer): ask Redis."""
    try:
        pttl = yield PTTL(rkey)
    except (CacheUnavailable, RedisReplyError):
        pttl = 0
    return scope.shared.l1_ttl_for(None if pttl == -1 else pttl) if pttl > 0 or pttl == -1 else 0.0


def get(scope: Scope, key: Any, model: Any) -> Plan[Any]:
    """get after the fast path missed: the value (rebuilt as model), or MISSING."""
    l1_key = scope.l1_key(key)
    if model is not None:  # the fast path looked in L1 only when model was None
        value = scope.front._l1_get(key)
        if value is not MISSING:
            return rebuild(value, model)
    value = yield from read(scope, l1_key, scope.keys.redis_key(key))
    return value if value is MISSING else rebuild(value, model)


def get_or_load(
    scope: Scope,
    key: Any,
    loader: Callable[[Any], Any],
    ttl: Any,
    look_in_l1: bool = True,
    keep: Callable[[Any], bool] | None = None,
    cache_none: bool | None = None,
    tags: Any = None,
    fresh: Freshness | None = None,
) -> Plan[Any]:
    """L1, then (under the driver's single-flight for the key) Redis, then the loader.

    What the loader returns is stored (under tags, if given) unless keep(value) says no, or
    it is None and cache_none (default: the cache's) is false. fresh: early refresh and the
    stale windows for this call (default: the cache's; core/freshness.py)."""
    l1_key = scope.l1_key(key)
    ttl_ms = scope.shared.ttl_ms(ttl)
    tagged = () if tags is None else tagging.check_tags(tags)
    if not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    if look_in_l1:
        value = scope.front._l1_get(key)
        if value is not MISSING:
            return value
    rkey = scope.keys.redis_key(key)
    job = Loading(key, l1_key, rkey, loader, ttl_ms, keep, cache_none, tagged, fresh or scope.shared.freshness)
    return (yield Flight(l1_key, load(scope, job)))


@dataclass(slots=True)
class Loading:
    """One get_or_load's load: what load and refresh need to call the loader and store."""

    key: Any
    l1_key: Hashable
    rkey: bytes
    loader: Callable[[Any], Any]
    ttl_ms: int | None
    keep: Callable[[Any], bool] | None
    cache_none: bool | None
    tags: tuple[str, ...]
    fresh: Freshness
    replaces: bytes | None = None  # a refresh: the value in Redis it replaces (a stale one, or a fresh one early)
    stale: bool = False  # replaces is past its logical expiry (served by stale_if_error if the load fails)
    source_failing: bool = False  # the key's lease says its last load failed (lease.FAILED)


def get_with_loader(scope: Scope, key: Any, default: Any, model: Any) -> Plan[Any]:
    """get on a cache made with loader=: what the fast path leaves to the loader."""
    sh = scope.shared
    assert sh.loader is not None
    # model=None means the fast path has already looked in L1 (and counted the miss).
    value = yield from get_or_load(scope, key, sh.loader, None, look_in_l1=model is not None)
    if value is None and not sh.cache_none:
        return default
    return rebuild(value, model)


def load(scope: Scope, job: Loading) -> Plan[Any]:
    """Redis, then the loader (under the key's fleet-wide lease, core/lease.py); the loaded
    value goes to Redis (filed under job.tags) and L1 unless a write of the key came first,
    or get_or_load's keep and cache_none say it is not to be kept.

    A value found past its logical expiry (core/freshness.py) is served at once within
    stale_while_revalidate (one refresh runs in the background, under the lease), or kept
    in case the loader raises within stale_if_error."""
    sh = scope.shared
    rkey = job.rkey
    stale: Any = MISSING
    if sh.lease:
        value, lease, stale, age_ms = yield from _value_or_lease(scope, job)
    else:
        value, lease, age_ms = (yield from read(scope, job.l1_key, rkey)), None, 0.0
    if value is not MISSING:
        return value
    if stale is not MISSING and job.source_failing and age_ms < job.fresh.stale_if_error_ms:
        sh.stats.stale_served_error += 1  # the source failed a moment ago: not asked again yet
        return stale
    if stale is not MISSING and age_ms < job.fresh.stale_while_revalidate_ms:
        sh.stats.stale_served_revalidating += 1
        if lease is not None:  # ours: the refresh is this process's to run (never dropped: it holds the lease)
            yield Background(None, refresh(scope, job, lease))  # job.replaces: the stale value
        return stale
    try:
        value, token, seconds = yield from _loaded(scope, job, lease)
    except Exception as exc:
        if stale is not MISSING and age_ms < job.fresh.stale_if_error_ms:
            sh.stats.stale_served_error += 1
            sh.burst_log.error("tiercache %s: loader of %r failed, serving the stale value: %r", sh.name, job.key, exc)
            return stale
        raise
    if stale is MISSING:
        job.replaces = None  # a load of a missing key: SET NX
    yield from _store_loaded(scope, job, value, lease, token, seconds)
    return value


def _loaded(scope: Scope, job: Loading, lease: bytes | None) -> Plan[tuple[Any, int, float]]:
    """job's loader, called and counted: (its value, the guard's read token taken before
    the call, the call's seconds). Its exception reaches the caller, the lease given back; a
    cancelled call leaves the lease to expire by itself (lease_ttl)."""
    sh = scope.shared
    token = sh.guard.begin_read()
    started = sh.clock()
    try:
        value = yield Call(job.loader, (job.key,))
    except Exception:
        sh.load_finished(started, ok=False)
        # A value the others may serve instead: hold off those that do (GET_OR_LEASE lets the
        # others take the lease over), so the failing source is not asked once per read.
        if lease is not None and job.replaces is not None:
            try:
                yield Eval(FAILED, (scope.keys.lease_key(job.rkey),), (lease, FAILURE_BACKOFF_MS), "release_lease")
            except (CacheUnavailable, RedisReplyError):
                pass  # it expires after lease_ttl
        else:
            yield from _release(scope, job.rkey, lease)
        raise
    except BaseException:
        sh.load_finished(started, ok=False)
        raise
    sh.load_finished(started, ok=True)
    return value, token, sh.clock() - started


def refresh(scope: Scope, job: Loading, lease: bytes | None) -> Plan[None]:
    """A background refresh of job's key (core/freshness.py): under lease, or under one it
    takes now (an early refresh: none if another process is loading the key). Its loader's
    failure is counted and logged, never raised: the readers have their value."""
    sh = scope.shared
    if lease is None:
        lease = sh.lease_tokens.next()
        try:
            taken = yield Eval(TAKE, (scope.keys.lease_key(job.rkey),), (lease, sh.lease_ms), "take_lease")
        except (CacheUnavailable, RedisReplyError):
            return
        if not taken:
            return
        sh.stats.early_refreshes += 1
    try:
        try:
            value, token, seconds = yield from _loaded(scope, job, lease)
        except Exception as exc:
            sh.stats.refresh_failures += 1
            sh.burst_log.error("tiercache %s: background refresh of %r failed: %r", sh.name, job.key, exc)
            return
        try:
            yield from _store_loaded(scope, job, value, lease, token, seconds)
        except Exception as exc:  # keep or encoding refused it
            sh.stats.refresh_failures += 1
            sh.burst_log.error("tiercache %s: background refresh of %r not stored: %r", sh.name, job.key, exc)
    except BaseException:  # cancelled (the cache closing): the lease goes back (if the fill took it, a no-op)
        yield from _release(scope, job.rkey, lease)
        raise


def _store_loaded(
    scope: Scope, job: Loading, value: Any, lease: bytes | None, token: int, seconds: float
) -> Plan[None]:
    """Store what job's loader returned (in seconds) in Redis and L1, unless keep or
    cache_none say no; under lease (over job.replaces, if a refresh, and only if that is
    still what Redis holds; when not kept, that value is deleted), or with SET NX. Keep's
    and the encoder's exceptions reach the caller, the lease given back."""
    sh, rkey = scope.shared, job.rkey
    try:
        cache_none = sh.cache_none if job.cache_none is None else job.cache_none
        kept = (value is not None or cache_none) and (job.keep is None or bool(job.keep(value)))
        if kept:
            # An integer too gets the header: a loaded value is no counter, and needs its expiry.
            data, px = _encoded(sh, job.fresh, value, rkey, job.ttl_ms, round(seconds * 1000), plain_ints=False)
    except Exception:
        yield from _release(scope, rkey, lease)
        raise
    replaces = "" if job.replaces is None else hashlib.sha1(job.replaces).hexdigest()
    if not kept:
        if lease is not None and replaces:  # the source has nothing now: neither may Redis
            drop = Eval(FILL_IF_LEASED, (rkey, scope.keys.lease_key(rkey)), (lease, b"", "", replaces), "fill_leased")
            try:
                yield drop
            except (CacheUnavailable, RedisReplyError):
                pass  # the stale value ends with its window
        yield from _release(scope, rkey, lease)
        return
    stored = False
    try:
        fill: Command
        if lease is not None:
            fill_args = (lease, data, "" if px is None else px, replaces)
            fill = Eval(FILL_IF_LEASED, (rkey, scope.keys.lease_key(rkey)), fill_args, "fill_leased")
        elif sh.write_scripts:
            # As SET NX (a write that landed while we were loading is newer than what we
            # loaded), but over a value past its logical expiry.
            args = (data, "" if px is None else px, int(time.time() * 1000))
            fill = Eval(FILL_UNLEASED, (rkey,), args, "fill")
        else:
            fill = Set(rkey, data, px, nx=True)
        request = _tagged(scope, job.tags, [rkey], px, fill)
        try:
            result = yield request
        except RedisReplyError as exc:
            if not (isinstance(fill, Eval) and fill.script == FILL_UNLEASED and _script_refused(exc)):
                raise
            sh.write_scripts = False  # this server or user runs no scripts: SET NX from now on
            fill = Set(rkey, data, px, nx=True)
            request = _tagged(scope, job.tags, [rkey], px, fill)
            result = yield request
        stored = bool(result if request is fill else result[-1])
        if lease is not None and not stored:  # a write of the key revoked the lease: what we loaded may be old
            sh.stats.leased_fills_refused += 1
    except CacheUnavailable:
        stored = True  # Redis is down: L1 alone keeps the loader from a stampede
    except RedisReplyError as exc:  # refused (out of memory, read-only): L1 keeps nothing
        sh.write_refused("set", exc.__cause__ or exc)
    if stored:
        decoded = sh.codec.decode(data, rkey)[0]
        sh.fill(job.l1_key, decoded, _l1_ttl_of(sh, job.fresh, data, job.ttl_ms), token)


def _l1_ttl_of(sh: Shared, fresh: Freshness, data: bytes, ttl_ms: int | None) -> float:
    """L1 ttl for a value just written: to its expiry, or with early refresh, to a point
    in its refresh window (freshness.l1_ttl)."""
    extended = freshness_of(data)
    if extended is None:
        return sh.l1_ttl_for(ttl_ms)
    return fresh.l1_ttl(extended[0], extended[1], time.time() * 1000.0, sh.l1_ttl)


def _release(scope: Scope, rkey: bytes, lease: bytes | None) -> Plan[None]:
    """Give up a lease that will not be filled, so a waiter loads now, not when it expires."""
    if lease is None:
        return
    try:
        yield Eval(RELEASE, (scope.keys.lease_key(rkey),), (lease,), "release_lease")
    except (CacheUnavailable, RedisReplyError):
        pass  # it expires after lease_ttl


def _value_or_lease(scope: Scope, job: Loading) -> Plan[tuple[Any, bytes | None, Any, float]]:
    """(value, lease, stale, age): (the value, None, ...) once it is in Redis, fresh (an
    early refresh started if XFetch says so); (MISSING, token, ...) once this caller holds
    the key's lease; (MISSING, None, ...) when Redis cannot say, or the wait for another's
    load passed lease_ttl (then load without a lease: the bound keeps a stuck holder from
    stalling every reader). stale is a value found past its logical expiry (else MISSING),
    age how long past (ms). A reader that may serve it at once (stale_while_revalidate)
    stops there, holding the lease or not; others wait as for a missing value."""
    sh = scope.shared
    rkey, l1_key, fresh = job.rkey, job.l1_key, job.fresh
    lease = sh.lease_tokens.next()
    waited, poll = 0.0, FIRST_POLL
    stale: Any = MISSING
    age_ms = 0.0
    while True:
        token = sh.guard.begin_read()
        now_ms = time.time() * 1000.0
        args = (lease, sh.lease_ms, int(now_ms), fresh.window_ms)
        request = Eval(GET_OR_LEASE, (rkey, scope.keys.lease_key(rkey)), args, "get_or_lease")
        try:
            reply = yield request
        except CacheUnavailable:
            return MISSING, None, stale, age_ms
        except RedisReplyError as exc:  # e.g. WRONGTYPE under the key
            sh.decode_failed(rkey, exc.__cause__ or exc)
            return MISSING, None, stale, age_ms
        if reply[0] in (2, 3):  # no value now: whatever stale one was seen is gone
            stale, age_ms, job.replaces, job.stale, job.source_failing = MISSING, 0.0, None, False, False
        if reply[0] == 1:
            # Fresh at now_ms, as the script judged it (judged again later, it could expire in between).
            value, l1_ttl = landed(sh, rkey, reply[1], fresh, now_ms)
            if value is MISSING:  # undecodable (counted)
                return MISSING, None, MISSING, 0.0
            if l1_ttl is None:
                l1_ttl = yield from l1_ttl_from_redis(scope, rkey)
            sh.fill(l1_key, value, l1_ttl, token)
            extended = freshness_of(reply[1]) if fresh.beta else None
            if extended is not None and fresh.refresh_early(extended[0], extended[1], now_ms):
                early = dataclasses.replace(job, replaces=bytes(reply[1]), stale=False)
                yield Background(l1_key, refresh(scope, early, None))
            return value, None, MISSING, 0.0
        if reply[0] in (4, 5):  # stale: keep it (and the lease, if ours)
            stale, deadline = _stale(sh, rkey, reply[1])
            job.replaces, job.stale = bytes(reply[1]), True
            age_ms = now_ms - deadline if stale is not MISSING else 0.0
            if reply[0] == 4:
                sh.stats.leases += 1
                return MISSING, lease, stale, age_ms
            job.source_failing = len(reply) > 2 and bytes(reply[2] or b"")[:1] == b"!"
            if stale is not MISSING and age_ms < fresh.stale_while_revalidate_ms:
                return MISSING, None, stale, age_ms  # someone is refreshing it
            if stale is not MISSING and job.source_failing and age_ms < fresh.stale_if_error_ms:
                return MISSING, None, stale, age_ms  # the source failed a moment ago
        elif reply[0] == 2:
            sh.stats.l2_misses += 1
            sh.stats.leases += 1
            return MISSING, lease, stale, age_ms
        if waited == 0.0:
            sh.stats.lease_waits += 1
        if waited >= sh.lease_ms / 1000.0:
            sh.stats.l2_misses += 1
            sh.stats.lease_timeouts += 1
            return MISSING, None, stale, age_ms
        yield Pause(poll)
        waited += poll
        poll = min(poll * 2, LAST_POLL)


def _stale(sh: Shared, rkey: bytes, data: bytes) -> tuple[Any, int]:
    """A value past its logical expiry, decoded, and its deadline (MISSING if it does not
    decode: counted, as any read's)."""
    sh.stats.l2_misses += 1
    try:
        value, deadline = sh.codec.decode(data, rkey)
    except DecodeError as exc:
        sh.decode_failed(rkey, exc)
        return MISSING, 0
    return value, deadline or 0


def get_many(scope: Scope, keys: Iterable[Any]) -> Plan[dict[Any, Any]]:
    """L1 for every key, one MGET for the rest, guarded fills."""
    # The per-key work (L1 look-ups, key encoding, decoding, L1 fills) runs in compiled
    # loops: it is what get_many costs on top of the MGET itself.
    sh = scope.shared
    found: dict[Any, Any] = {}
    missing = scope.front._l1_get_many(keys, found)
    if not missing:
        return found
    rkeys = scope.keys.redis_keys(missing)  # TypeError for a bad key, before any I/O
    path = scope.keys.path
    l1_keys: list[Hashable] = [(path, key) for key in missing] if path else missing
    token = sh.guard.begin_read()
    hits_before = len(found)
    try:
        blobs = yield MGet(rkeys)
    except (CacheUnavailable, RedisReplyError):
        blobs = [None] * len(rkeys)
    fills, errors = sh.codec.decode_batch(missing, blobs, rkeys, found, sh.l1_ttl)
    for rkey, exc in errors:
        sh.decode_failed(rkey, exc)
    hits = len(found) - hits_before
    sh.stats.l2_hits += hits
    sh.stats.l2_misses += len(blobs) - hits
    sh.guard.fill_many(l1_keys, token, fills, sh.cache_none)
    if sh.loader is not None:  # a cache-wide loader: what neither tier had, one key at a time
        for key, l1_key in zip(missing, l1_keys, strict=True):
            if key not in found:
                job = Loading(
                    key, l1_key, scope.keys.redis_key(key), sh.loader, sh.default_ttl_ms, None, None, (), sh.freshness
                )
                value = yield Flight(l1_key, load(scope, job))
                if value is not None or sh.cache_none:
                    found[key] = value
    return found


# KEYS: a key. {-2} if absent, else {its PTTL, the first bytes of its value (a header)}.
PEEK: Final = """
local left = redis.call('PTTL', KEYS[1])
if left == -2 then return {-2} end
return {left, redis.call('GETRANGE', KEYS[1], 0, HEADER_END)}
""".replace("HEADER_END", str(HEADER_EXT.size - 1))


def _time_left(scope: Scope, key: Any) -> Plan[float | None]:
    """Seconds key has left (math.inf: no expiry; None: absent, or past its logical
    expiry: core/freshness.py), or CacheUnavailable / RedisReplyError."""
    reply = yield Eval(PEEK, (scope.keys.redis_key(key),), (), "peek")
    if reply[0] == -2:
        return None
    extended = freshness_of(bytes(reply[1]))
    if extended is not None and extended[0]:
        left = (extended[0] - time.time() * 1000.0) / 1000.0
        return left if left > 0 else None
    return math.inf if reply[0] == -1 else reply[0] / 1000.0


def exists(scope: Scope, key: Any) -> Plan[bool]:
    l1_key = scope.l1_key(key)
    if scope.shared.gate.open and l1_key in scope.shared.l1:
        return True
    try:
        return (yield from _time_left(scope, key)) is not None
    except (CacheUnavailable, RedisReplyError):
        return False


def ttl(scope: Scope, key: Any) -> Plan[float | None]:
    scope.l1_key(key)
    try:
        return (yield from _time_left(scope, key))
    except (CacheUnavailable, RedisReplyError):
        return None


# -- writes ---------------------------------------------------------------------------------


Failure = CacheUnavailable | RedisReplyError
"""Why a write did not land: Redis did not answer, or answered with an error reply."""


# KEYS: data key [, lease key]. ARGV: channel or "", message, the command, its arguments
# after the key. A write of one key with write()'s riders in one command (redis-py's cost is
# per command): the command, the lease's revocation, the invalidation. As in the pipeline it
# replaces, a refused command (OOM, READONLY) still revokes and publishes (pcall), and its
# error is the reply: receivers see every numbered message, so a refused write is no gap.
WRITE_ONE: Final = """
local reply = redis.pcall(ARGV[3], KEYS[1], unpack(ARGV, 4))
if KEYS[2] then redis.pcall('DEL', KEYS[2]) end
if ARGV[1] ~= '' then redis.pcall('PUBLISH', ARGV[1], ARGV[2]) end
return reply
"""


def _as_script_args(request: Command | Pipeline) -> tuple[bytes, ...] | None:
    """WRITE_ONE's command and arguments for a write of one key it can carry, else None."""
    if type(request) is Set and not request.nx:
        data = request.data if isinstance(request.data, bytes) else str(request.data).encode()
        return (b"SET", data) if request.px is None else (b"SET", data, b"PX", b"%d" % request.px)
    if type(request) is Delete and len(request.keys) == 1:
        return (b"DEL",)
    return None


def write(
    scope: Scope,
    l1_keys: list[Hashable],
    rkeys: list[bytes],
    request: Command | Pipeline,
    l1_values: list[Any] | None,
    l1_ttl: float,
    wrote_through: bool = False,
) -> Plan[tuple[Failure | None, Any]]:
    """Run a write under the fill guard, publish its invalidation in the same round trip,
    and keep the new values in L1 (or drop the keys).

    Returns (None, result) when Redis took it, else (the failure, None). Whatever ends the
    write other than success (a failure, a cancelled call) drops the keys from L1, and when
    the writer already changed the source of truth (wrote_through), schedules their repair."""
    sh = scope.shared
    guard = sh.guard
    publisher = sh.publisher
    main = request.commands if isinstance(request, Pipeline) else (request,)
    rewrites = l1_values is not None or isinstance(request, Delete)  # not expire or incr: stale stays stale
    # In the same round trip, after the write: the revocation of any load of these keys in
    # flight (what it loaded may be older) and the invalidation.
    lease_keys = tuple(scope.keys.lease_key(rkey) for rkey in rkeys) if sh.lease else ()
    message = publisher.keys_message(rkeys) if publisher is not None else b""  # (numbers it)
    riding = bool(lease_keys) or publisher is not None
    command = _as_script_args(request) if riding and sh.write_scripts else None
    if command is not None and sh.sharded and publisher is not None:
        # On a cluster the message goes by sharded pub/sub, to its channel's node: after the
        # write (core/sharding.py), not from the script on the key's node.
        written = Eval(WRITE_ONE, (rkeys[0], *lease_keys), (b"", b"", *command), request.op)
        sent: Command | Pipeline = Pipeline((written, Publish(publisher.channel, message)), request.op)
    elif command is not None:  # the write and its riders in one command
        channel = publisher.channel if publisher is not None else b""
        sent = Eval(WRITE_ONE, (rkeys[0], *lease_keys), (channel, message, *command), request.op)
    else:
        sent = _with_riders(request, main, lease_keys, publisher, message) if riding else request
    token = guard.begin_writes(l1_keys, drop=l1_values is None)
    ok: bool = False
    failure: Failure | None = None
    result: Any = None
    try:
        try:
            result = yield sent
        except RedisReplyError as exc:
            if command is None or not _script_refused(exc):
                raise
            # This server or user may not run scripts (ACL without @scripting, EVAL renamed):
            # the pipeline from now on, and now, with the same numbered message (no gap).
            sh.write_scripts = False
            sent = _with_riders(request, main, lease_keys, publisher, message)
            result = yield sent
        ok = True
    except (CacheUnavailable, RedisReplyError) as exc:
        failure = exc
    finally:
        guard.end_writes(l1_keys, token, l1_values, l1_ttl, ok)
        if ok:
            if sh.repairs.pending and rewrites:
                sh.repairs.written(rkeys)  # the keys were rewritten or deleted: nothing stale left
        elif wrote_through:
            sh.repairs.schedule(l1_keys, rkeys)
    if failure is not None:
        return failure, None
    if publisher is not None:
        sh.stats.invalidations_sent += 1
    if sent is not request and isinstance(sent, Pipeline):
        replies: list[Any] = result  # the write's replies, then the riders'
        result = replies[: len(main)] if isinstance(request, Pipeline) else replies[0]
    return None, result


def _with_riders(
    request: Command | Pipeline,
    main: tuple[Command, ...],
    lease_keys: tuple[bytes, ...],
    publisher: Publisher | None,
    message: bytes,
) -> Pipeline:
    """The write's commands, then its riders, in one pipeline."""
    riders: tuple[Command, ...] = (Delete(lease_keys),) if lease_keys else ()
    if publisher is not None:
        riders += (Publish(publisher.channel, message),)
    transaction = request.transaction if isinstance(request, Pipeline) else False
    return Pipeline((*main, *riders), request.op, transaction)


def _script_refused(exc: RedisReplyError) -> bool:
    """Did Redis refuse to run a script at all (rather than the script's command failing)?"""
    cause = exc.__cause__
    text = str(cause or exc)  # redis-py strips NOPERM into the class NoPermissionError
    return type(cause).__name__ == "NoPermissionError" or "unknown command" in text


# -- fields and lists: read-modify-write of one value, atomic in Redis ------------------------


def update(scope: Scope, key: Any, modify: Callable[[Any], tuple[Any, Any]], ttl: Any, what: str) -> Plan[Any]:
    """modify(value, or MISSING) -> (new value, or NO_CHANGE; result), as one atomic update
    of key in Redis (requests.Update): the TTL of an existing key is kept, a new key gets
    ttl; every other process's L1 drops the key, this one keeps the new value. modify's
    exception (a key holding something else) changes nothing and reaches the caller; so do
    Redis's failures (CacheUnavailable, RedisReplyError), as for incr."""
    sh = scope.shared
    l1_key = scope.l1_key(key)
    rkey = scope.keys.redis_key(key)
    new_ttl_ms = sh.ttl_ms(ttl)
    kept: list[Any] = []  # the value written, as every process will read it, and its L1 ttl

    def change(old: bytes | None) -> Any:
        kept.clear()
        value, ttl_ms, px = MISSING, new_ttl_ms, new_ttl_ms
        deadline: int | None = None
        fresh = sh.freshness
        delta_ms = 0
        if old is not None:
            try:
                value, deadline = sh.codec.decode(old, rkey)
            except DecodeError as exc:  # as a read: a counted miss, here overwritten
                sh.decode_failed(rkey, exc)
                old = None
        extended = freshness_of(old) if old is not None else None
        if extended is not None:  # written for early refresh or a stale window: it stays so
            if extended[0] and extended[0] <= time.time() * 1000:
                value, old = MISSING, None  # past its logical expiry: gone, as for a read
            else:
                fresh, delta_ms = _EXTENDED_ONLY if not fresh.extended else fresh, extended[1]
        if old is not None:
            if deadline:
                ttl_ms, px = max(1, deadline - int(time.time() * 1000)), KEEP_TTL
            elif deadline is not None:  # stored with no expiry
                ttl_ms, px = None, KEEP_TTL
        new, result = modify(value)
        if new is NO_CHANGE:
            return NO_CHANGE, result
        data, new_px = _encoded(sh, fresh, new, rkey, ttl_ms, delta_ms)
        px = px if px is KEEP_TTL else new_px
        kept[:] = [sh.codec.decode(data, rkey)[0], _l1_ttl_of(sh, fresh, data, ttl_ms)]
        return data, px, result

    riders: tuple[Command, ...] = (Delete((scope.keys.lease_key(rkey),)),) if sh.lease else ()
    if sh.publisher is not None:
        riders += (Publish(sh.publisher.channel, sh.publisher.keys_message([rkey])),)
    token = sh.guard.begin_writes([l1_key])
    ok = False
    try:
        result = yield Update(rkey, change, riders, what)
        ok = bool(kept)
    except CacheUnavailable as exc:
        raise CacheUnavailable(f"cache {sh.name!r}: {what} did not reach Redis") from exc
    finally:
        sh.guard.end_writes([l1_key], token, kept[:1] if ok else None, kept[1] if ok else 0.0, ok)
    if sh.publisher is not None:
        sh.stats.invalidations_sent += 1
    return result


# What keeps a value's extended header through an update on a cache whose own settings would
# not write one (another process's get_or_load asked for a stale window, say).
_EXTENDED_ONLY: Final = Freshness(stale_while_revalidate_ms=1)


def _fields(value: Any, key: Any, what: str) -> dict[Any, Any]:
    """A copy of the dict a field operation changes ({} for a key not there yet)."""
    if value is MISSING:
        return {}
    if type(value) is not dict:
        raise TypeError(f"{what}: key {key!r} holds a {type(value).__name__}, not a dict; nothing was changed")
    return dict(value)


def get_field(scope: Scope, key: Any, field: Any, default: Any) -> Plan[Any]:
    """One field of the dict under key (from L1 or Redis), or default."""
    value = scope.front._l1_get(key)
    if value is MISSING:
        value = yield from get(scope, key, None)
    return _fields(value, key, "get_field").get(field, default)


def set_field(scope: Scope, key: Any, field: Any, value: Any, ttl: Any) -> Plan[bool]:
    def modify(current: Any) -> tuple[Any, Any]:
        fields = _fields(current, key, "set_field")
        fields[field] = value
        return fields, True

    done: bool = yield from update(scope, key, modify, ttl, "set_field")
    return done


def incr_field(scope: Scope, key: Any, field: Any, amount: int | float) -> Plan[int | float]:
    if type(amount) not in (int, float):
        raise TypeError(f"amount must be an int or a float, got {type(amount).__name__}")

    def modify(current: Any) -> tuple[Any, Any]:
        fields = _fields(current, key, "incr_field")
        old = fields.get(field, 0)
        if type(old) not in (int, float):
            raise TypeError(f"incr_field: field {field!r} of {key!r} holds a {type(old).__name__}, not a number")
        fields[field] = old + amount
        return fields, fields[field]

    total: int | float = yield from update(scope, key, modify, None, "incr_field")
    return total


def delete_field(scope: Scope, key: Any, field: Any) -> Plan[bool]:
    def modify(current: Any) -> tuple[Any, Any]:
        fields = _fields(current, key, "delete_field")
        if field not in fields:
            return NO_CHANGE, False
        del fields[field]
        return fields, True

    removed: bool = yield from update(scope, key, modify, None, "delete_field")
    return removed


def append(scope: Scope, key: Any, value: Any, max_len: int | None, ttl: Any) -> Plan[int]:
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")

    def modify(current: Any) -> tuple[Any, Any]:
        if current is MISSING:
            items: list[Any] = []
        elif type(current) is list:
            items = list(current)
        else:
            raise TypeError(f"append: key {key!r} holds a {type(current).__name__}, not a list; nothing was changed")
        items.append(value)
        if max_len is not None:
            items = items[-max_len:]
        return items, len(items)

    length: int = yield from update(scope, key, modify, ttl, "append")
    return length


def repair(scope: Scope) -> Plan[None]:
    """Delete in Redis, and invalidate everywhere, the keys whose write reached the source
    of truth but maybe not Redis (repair.py); they stay scheduled if Redis fails again."""
    sh = scope.shared
    claim = sh.repairs.claim()
    if claim is None:
        return
    rkeys = tuple(claim)
    leases = tuple(scope.keys.lease_key(rkey) for rkey in rkeys) if sh.lease else ()
    commands: tuple[Command, ...] = (Delete((*rkeys, *leases)),)
    if sh.publisher is not None:
        commands = (*commands, Publish(sh.publisher.channel, sh.publisher.keys_message(list(rkeys))))
    repaired = False
    try:
        yield Pipeline(commands, "repair")
        repaired = True
    except (CacheUnavailable, RedisReplyError):
        pass
    finally:
        sh.repairs.finish(claim, repaired)
    if repaired and sh.publisher is not None:
        sh.stats.invalidations_sent += 1


def set(scope: Scope, key: Any, value: Any, ttl: Any, tags: Any = None) -> Plan[bool]:
    sh = scope.shared
    l1_key = scope.l1_key(key)
    ttl_ms = sh.ttl_ms(ttl)
    tagged = () if tags is None else tagging.check_tags(tags)
    rkey = scope.keys.redis_key(key)
    data, px = _encoded(sh, sh.freshness, value, rkey, ttl_ms)  # TypeError here: nothing written anywhere
    l1_value = sh.codec.decode(data, rkey)[0]  # L1 holds what every other process reads
    if sh.writer is not None:
        yield Call(sh.writer, (key, value))
    request: Command | Pipeline = Set(rkey, data, px)
    if tagged:
        request = _tagged(scope, tagged, [rkey], px, request)
    failure, _ = yield from write(
        scope, [l1_key], [rkey], request, [l1_value], sh.l1_ttl_for(ttl_ms), sh.writer is not None
    )
    if failure is not None:
        _write_failed(scope, "set", failure)
        return False
    return True


def set_many(
    scope: Scope, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]], ttl: Any, tags: Any = None
) -> Plan[bool]:
    sh = scope.shared
    pairs = list(mapping.items() if isinstance(mapping, Mapping) else mapping)
    ttl_ms = sh.ttl_ms(ttl)
    tagged = () if tags is None else tagging.check_tags(tags)
    l1_keys = [scope.l1_key(key) for key, _ in pairs]
    rkeys = [scope.keys.redis_key(key) for key, _ in pairs]
    stored = [_encoded(sh, sh.freshness, value, rkey, ttl_ms) for (_, value), rkey in zip(pairs, rkeys, strict=True)]
    l1_values = [sh.codec.decode(data, rkey)[0] for (data, _), rkey in zip(stored, rkeys, strict=True)]
    if not pairs:
        return True
    if sh.writer is not None:
        yield from _write_through(scope, [(key, value) for key, value in pairs], l1_keys, rkeys)
    commands = tuple(Set(rkey, data, px) for rkey, (data, px) in zip(rkeys, stored, strict=True))
    lives = [px for _, px in stored]
    longest = None if None in lives or not lives else max(px for px in lives if px is not None)
    request = _tagged(scope, tagged, rkeys, longest, Pipeline(commands, "set_many"))
    failure, _ = yield from write(
        scope, l1_keys, rkeys, request, l1_values, sh.l1_ttl_for(ttl_ms), sh.writer is not None
    )
    if failure is not None:
        _write_failed(scope, "set_many", failure)
        return False
    return True


def _encoded(
    sh: Shared,
    fresh: Freshness,
    value: Any,
    rkey: bytes,
    ttl_ms: int | None,
    delta_ms: int = 0,
    plain_ints: bool = True,
) -> tuple[bytes, int | None]:
    """value's bytes and Redis PX: with early refresh or a stale window, the extended header
    (delta_ms: the load's duration) and a PX longer by the window (core/freshness.py)."""
    if not fresh.extended:
        return sh.codec.encode(value, rkey, ttl_ms), ttl_ms
    data = sh.codec.encode(value, rkey, ttl_ms, delta_ms, plain_ints)
    return data, fresh.px(ttl_ms, freshness_of(data) is not None)


def _tagged(
    scope: Scope, tags: tuple[str, ...], rkeys: list[bytes], ttl_ms: int | None, request: Command | Pipeline
) -> Command | Pipeline:
    """request, or with tags, one MULTI that files rkeys under them, then does request
    (core/tags.py)."""
    if not tags:
        return request
    main = request.commands if isinstance(request, Pipeline) else (request,)
    return Pipeline((*tagging.registration(scope, tags, rkeys, ttl_ms), *main), request.op, transaction=True)


def invalidate_tags(scope: Scope, tags: Any) -> Plan[int]:
    """Delete every key of this namespace written with any of tags, in Redis and (by the
    usual numbered messages, one per batch) in every process's L1: how many Redis held.
    Every key filed under a tag when the call began goes; keys tagged while it runs may be
    left for the next call (tags.MEMBERS walks the tag set with ZSCAN)."""
    names = tagging.check_tags(tags)
    deleted = 0
    for tag in names:
        try:
            slots = yield from tagging.slots(scope, tag)
        except (CacheUnavailable, RedisReplyError) as exc:
            _write_failed(scope, "invalidate_tags", exc)
            return deleted
        for slot in slots:
            cursor = None
            while cursor != 0:
                try:
                    cursor, rkeys = yield from tagging.members(scope, tag, slot, cursor or 0)
                except (CacheUnavailable, RedisReplyError) as exc:
                    _write_failed(scope, "invalidate_tags", exc)
                    return deleted
                if not rkeys:
                    continue
                l1_keys = [key for key in map(functools.partial(_l1_key_of, scope), rkeys) if key is not None]
                dropping = tagging.dropping(scope, tag, slot, rkeys)
                failure, removed = yield from write(scope, l1_keys, rkeys, dropping, None, 0.0)
                if failure is not None:
                    _write_failed(scope, "invalidate_tags", failure)
                    return deleted
                deleted += int(removed)
    return deleted


def delete(scope: Scope, keys: list[Any], what: str) -> Plan[int | None]:
    """Delete keys; how many Redis held, or None if it could not be reached."""
    sh = scope.shared
    l1_keys = [scope.l1_key(key) for key in keys]
    if not keys:
        return 0
    rkeys = [scope.keys.redis_key(key) for key in keys]
    if sh.writer is not None:
        yield from _write_through(scope, [(key, DELETED) for key in keys], l1_keys, rkeys)
    failure, removed = yield from write(scope, l1_keys, rkeys, Delete(tuple(rkeys)), None, 0.0, sh.writer is not None)
    if failure is not None:
        _write_failed(scope, what, failure)
        return None
    return int(removed)


def expire(scope: Scope, key: Any, ttl: Any) -> Plan[bool]:
    sh = scope.shared
    l1_key = scope.l1_key(key)
    ttl_ms = sh.ttl_ms(ttl)
    rkey = scope.keys.redis_key(key)
    request = Eval(EXPIRE_SCRIPT, (rkey,), expire_args(ttl_ms, sh.freshness.window_ms), "expire")
    failure, changed = yield from write(scope, [l1_key], [rkey], request, None, 0.0)
    if failure is not None:
        _write_failed(scope, "expire", failure)
        return False
    return bool(changed)


def incr(scope: Scope, key: Any, amount: int, ttl: Any) -> Plan[int]:
    sh = scope.shared
    l1_key = scope.l1_key(key)
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int, got {type(amount).__name__}")
    ttl_ms = sh.ttl_ms(ttl)
    rkey = scope.keys.redis_key(key)
    commands: tuple[Command, ...] = (IncrBy(rkey, amount),)
    if ttl_ms is not None:  # a counter this call creates gets the ttl; an existing one keeps its own
        commands = (Set(rkey, 0, ttl_ms, nx=True), *commands)
    failure, results = yield from write(scope, [l1_key], [rkey], Pipeline(commands, "incrby", True), None, 0.0)
    if isinstance(failure, RedisReplyError):  # not an integer, out of range, or a write refused
        cause = failure.__cause__ or failure
        raise RedisReplyError(f"cache {sh.name!r}: cannot increment {key!r}: {cause}") from cause
    if failure is not None:
        raise CacheUnavailable(f"cache {sh.name!r}: incr did not reach Redis") from failure
    return int(results[-1])


def clear(scope: Scope) -> Plan[bool]:
    """Every key of this namespace (nested ones too), from Redis and every process's L1."""
    sh = scope.shared
    patterns = [glob_escape(scope.keys.namespace_prefix) + b"*"]
    if scope.path:  # the whole cache's scan finds the leases too; a namespace's must ask
        patterns.append(scope.keys.lease_glob() + b"*")
    sh.stats.flushed("clear")
    sh.guard.flush(scope.path)
    failure = None
    try:
        for pattern in patterns:
            cursor = 0
            while True:
                cursor, found = yield Scan(cursor, pattern, 1000)
                if found:
                    yield Unlink(tuple(found))
                if not cursor:
                    break
        if sh.publisher is not None:
            yield Publish(sh.publisher.channel, sh.publisher.flush_message(scope.path))
            sh.stats.invalidations_sent += 1
    except (CacheUnavailable, RedisReplyError) as exc:
        failure = exc
    sh.guard.flush(scope.path)  # again: a read may have filled from a key deleted above
    if failure is not None:
        _write_failed(scope, "clear", failure)
        return False
    return True


def check_match(match: Any) -> None:
    if not isinstance(match, str):
        raise TypeError(f"match must be a str glob pattern, got {type(match).__name__}")


def check_scan(match: Any, count: Any) -> None:
    """keys()'s arguments, checked when it is called (not at its first step)."""
    check_match(match)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")


def scan_keys(scope: Scope, cursor: int, match: str, count: int) -> Plan[tuple[int, list[Any]]]:
    """One SCAN step over this namespace's own keys (not its nested namespaces', not
    leases): (the next cursor, 0 when done; the keys found, as the user gave them)."""
    check_scan(match, count)
    pattern = glob_escape(scope.keys.namespace_prefix) + match.encode("utf-8", "surrogatepass")
    cursor, found = yield Scan(cursor, pattern, count)
    keys = []
    for rkey in found:
        try:
            path, key = scope.keys.parse(rkey)
        except ValueError:  # a lease
            continue
        if path == scope.path:
            keys.append(key)
    return int(cursor), keys


def delete_match(scope: Scope, match: str) -> Plan[int]:
    """delete_match(match): a Redis glob on the keys as stored (as keys() takes it)."""
    check_match(match)
    return (yield from _delete_matching(scope, match.encode("utf-8", "surrogatepass"), "delete_match"))


def delete_prefix(scope: Scope, prefix: str) -> Plan[int]:
    """delete_prefix(prefix): the keys whose stored form starts with prefix's (KeyCodec's
    escaping of a leading @ or %), glob characters escaped."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    stored = scope.keys.redis_key(prefix)[len(scope.keys.namespace_prefix) :]
    return (yield from _delete_matching(scope, glob_escape(stored) + b"*", "delete_prefix"))


def _delete_matching(scope: Scope, match: bytes, what: str) -> Plan[int]:
    """Every key of this namespace (not nested ones') whose stored form matches the Redis
    glob match, by SCAN and UNLINK in batches, their load leases revoked; then one message
    that has every process drop the matching L1 keys. The number of keys Redis held (those
    deleted before a failure, if Redis stops answering)."""
    sh = scope.shared
    pattern = glob_escape(scope.keys.namespace_prefix) + match
    matches = scope.keys.matcher(pattern, scope.path)
    sh.guard.drop_where(matches)
    deleted = 0
    failure = None
    # The keys, then the load leases of matching keys (held or not: a load in flight for a
    # key absent now would put back what it read before the delete).
    lease_pattern = scope.keys.lease_glob() + match
    passes = [(pattern, False), (lease_pattern, True)] if sh.lease else [(pattern, False)]
    try:
        for scan_pattern, leases in passes:
            cursor = 0
            while True:
                # Leases are few and short-lived: the pass that looks for them takes bigger
                # steps (fewer round trips over the same keyspace).
                cursor, found = yield Scan(cursor, scan_pattern, 10_000 if leases else 1000)
                mine = [rkey for rkey in found if _in_namespace(scope, rkey, leases)]
                if mine:
                    removed = int((yield Unlink(tuple(mine))))
                    deleted += 0 if leases else removed
                if not cursor:
                    break
        if sh.publisher is not None:
            yield Publish(sh.publisher.channel, sh.publisher.match_message(pattern, scope.path))
            sh.stats.invalidations_sent += 1
    except (CacheUnavailable, RedisReplyError) as exc:
        failure = exc
        if deleted and sh.publisher is not None:  # what was deleted must reach every L1 anyway
            try:
                yield Publish(sh.publisher.channel, sh.publisher.match_message(pattern, scope.path))
                sh.stats.invalidations_sent += 1
            except (CacheUnavailable, RedisReplyError):
                pass  # Redis is gone: every subscriber is cut off and empties its L1
    sh.guard.drop_where(matches)  # again: a read may have filled from a key deleted above
    if failure is not None:
        _write_failed(scope, what, failure)
    return deleted


def _in_namespace(scope: Scope, rkey: bytes, lease: bool = False) -> bool:
    """Whether rkey is a key of this namespace itself (not a nested one's, not a lease), or
    with lease, the load lease of one."""
    if lease:
        leased = scope.keys.leased_key(rkey)
        if leased is None:
            return False
        rkey = leased
    prefix = scope.keys.namespace_prefix
    if rkey.startswith(prefix) and rkey[len(prefix) : len(prefix) + 1] != b"@":  # the common case, without parse
        return rkey[len(prefix) : len(prefix) + 2] not in (b"%T", b"%I", b"%D")  # a tag set is no key
    try:
        path, _ = scope.keys.parse(rkey)
    except ValueError:
        return False
    return path == scope.path


def _l1_key_of(scope: Scope, rkey: bytes) -> Hashable | None:
    """The L1 key of a Redis key of this cache (None if it is no key): parsed, except in
    the common case of a plain str key of this namespace."""
    prefix = scope.keys.namespace_prefix
    if rkey.startswith(prefix) and rkey[len(prefix) : len(prefix) + 1] not in (b"@", b"%"):
        return scope.l1_key(rkey[len(prefix) :].decode("utf-8", "surrogatepass"))
    try:
        path, key = scope.keys.parse(rkey)
    except ValueError:
        return None
    return key if not path else (path, key)
