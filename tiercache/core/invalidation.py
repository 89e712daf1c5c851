"""The invalidation bus: every write tells the other processes to drop their L1 copies.

Messages go over Redis pub/sub, one channel per cache name and Redis database::

    [1, origin, seq, op, payload, sent]   msgpack
    origin   16 random bytes naming the cache instance that wrote (its own are ignored)
    seq      that origin's message counter: a number that never arrives means a lost message
    op       KEYS (payload: the Redis keys written), FLUSH (payload: the namespace path
             cleared, [] for the whole cache) or MATCH (payload: a Redis glob of keys
             deleted, then the namespace path whose keys it is about); a receiver that
             meets an op it does not know empties L1
    sent     unix time (float seconds) the message was made, just before its write went
             out: receivers observe their invalidation lag from it. Readers ignore fields
             past the fifth, so later fields can be added without a new version.

A write publishes in the same pipeline as the write itself, after it, so a message never
overtakes its write and costs no extra round trip; a bulk write is one message.

The subscriber (a daemon thread for TieredCache, an asyncio task for AsyncTieredCache)
applies every message not from its own origin through the fill guard. What it cannot
vouch for, it refuses to serve (invariant 3):

* until its subscription is confirmed, and whenever the connection drops, the L1 gate is
  shut: L1 is emptied and neither serves nor stores; it reopens, empty, once the new
  subscription is confirmed;
* it PINGs every `heartbeat` seconds; past `max_silence` with no word from Redis it shuts
  the gate and reconnects;
* a sequence number that has not arrived `gap_grace` seconds after a later one did is a
  lost message: L1 is flushed (messages of one origin may arrive out of order, since its
  threads and tasks publish on different connections, hence the grace).

Everything here is sans-I/O, the subscriber's loop included (``subscribe``, a plan of
SubscriberRequests): cache.py runs it on a thread, aio.py as an asyncio task, and they only
say how each request is done with their client.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final, Literal

import msgpack

from .._validate import ttl_seconds
from ..codec import KeyCodec
from ..errors import RedisReplyError
from .guard import FillGuard
from .requests import Do, Ready, Receive, Sleep, Subscribe, SubscriberRequest, TrackingOn, WatchPushes
from .stats import TierStats

if TYPE_CHECKING:
    from .shared import Shared

log = logging.getLogger(__name__)

VERSION: Final = 1
KEYS: Final = 1
FLUSH: Final = 2
MATCH: Final = 3
TRACKING_CHANNEL: Final = b"__redis__:invalidate"  # where Redis sends client-tracking invalidations
MAX_GAP: Final = 10_000  # a jump this large is treated as a loss at once
# Anyone who can publish on the channel must not be able to queue unbounded work: past this
# many keys in one message, missing numbers awaited, or tracking pushes waiting, L1 is
# flushed (counted as reason "overflow") instead.
MAX_PENDING: Final = 10_000
POLL: Final = 0.05  # seconds between the subscriber's checks of heartbeat, silence and gaps
MIN_BACKOFF, MAX_BACKOFF = 0.05, 1.0  # seconds between reconnection attempts, doubling


class BusSettings:
    """Timing of the subscriber, validated once."""

    def __init__(self, heartbeat: float = 1.0, max_silence: float = 3.0, gap_grace: float = 1.0) -> None:
        self.heartbeat = ttl_seconds(heartbeat, "heartbeat")
        self.max_silence = ttl_seconds(max_silence, "max_silence")
        self.gap_grace = ttl_seconds(gap_grace, "gap_grace")
        if self.max_silence <= self.heartbeat:
            raise ValueError(f"max_silence ({max_silence}) must be longer than heartbeat ({heartbeat})")


def echo_marker(origin: bytes) -> bytes:
    """The bytes every message of origin starts with (its array header, version and origin):
    how a subscriber knows an echo of its own cache's message without decoding it."""
    header: bytes = msgpack.packb([VERSION, origin, 0, KEYS, [], 0.0])
    return header[: 1 + len(msgpack.packb(VERSION)) + len(msgpack.packb(origin))]


# A process that writes hears each of its writes' messages again (an echo) and has only to
# ignore them; waking for each costs its subscriber ~10 us of CPU, ~8% of a set. While only
# echoes arrive, the sync subscriber therefore looks at its socket at most once per
# ECHO_LINGER seconds (csrc/_echo.pxi): another process's message that arrives meanwhile
# reaches a busy writer's L1 up to this much later. A process that does not write never waits.
ECHO_LINGER: Final = 0.001

# What a driver's Receive returns when it consumed echoes of this cache's own messages (and
# nothing else) without handing them over: Redis was heard, there is nothing to apply.
ECHO: Final[dict[str, Any]] = {"type": "echo"}


def channel_for(keys: KeyCodec, db: int) -> bytes:
    """The pub/sub channel of a cache (pub/sub ignores databases, so the db is in the name)."""
    return keys.cache_prefix + b"inv:" + str(db).encode()


class Publisher:
    """Builds this cache instance's messages."""

    def __init__(self, channel: bytes, wall_clock: Callable[[], float] = time.time) -> None:
        self.channel = channel
        self.origin = os.urandom(16)
        self._seq = 0
        self._wall_clock = wall_clock
        # One packer for every message (msgpack.packb makes one a call). The compiled packer
        # may be shared by threads: a message holds only ints, bytes, str and a float, so
        # packing runs no Python code and keeps the GIL throughout. msgpack's pure-Python
        # fallback could switch threads mid-message: there, a packer a call.
        self._pack = msgpack.Packer().pack if msgpack.Packer.__module__ != "msgpack.fallback" else msgpack.packb

    def keys_message(self, redis_keys: list[bytes]) -> bytes:
        """The message of a write to redis_keys."""
        return self._message(KEYS, list(redis_keys))

    def flush_message(self, path: tuple[str, ...]) -> bytes:
        """The message of a clear() of the namespace path (() for the whole cache)."""
        return self._message(FLUSH, list(path))

    def match_message(self, pattern: bytes, path: tuple[str, ...]) -> bytes:
        """The message of a bulk delete of the keys of namespace path matching pattern."""
        return self._message(MATCH, [pattern, *path])

    def _message(self, op: int, payload: list[Any]) -> bytes:
        # One increment under the GIL; exactness across threads is not needed, because
        # receivers tolerate reordering and only act on missing numbers.
        self._seq += 1
        message: bytes = self._pack([VERSION, self.origin, self._seq, op, payload, self._wall_clock()])
        return message


class _OriginTrack:
    __slots__ = ("highest", "missing")

    def __init__(self, seq: int) -> None:
        self.highest = seq
        self.missing: dict[int, float] = {}


class SubscriberState:
    """What the subscriber knows, and what each event means for L1 (no I/O here)."""

    def __init__(
        self,
        guard: FillGuard,
        keys: KeyCodec,
        origin: bytes,
        settings: BusSettings,
        stats: TierStats,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.guard = guard
        self.keys = keys
        self.origin = origin
        self.echo_marker = echo_marker(origin)
        self.settings = settings
        self.stats = stats
        self.origins: dict[bytes, _OriginTrack] = {}
        self.connected = False
        self.pending = 0
        self.last_heard = -math.inf
        self.next_ping = -math.inf
        self.wall_clock = wall_clock  # for the lag since a message was sent (other processes' clocks)
        self.pushed: list[Any] = []  # RESP3 tracking pushes, filled by the driver's handler
        self.missing_count = 0  # sequence numbers awaited, over every origin

    # -- connection ---------------------------------------------------------------------------

    def confirmed(self, now: float) -> None:
        """The subscription is live: L1 may serve again, starting empty."""
        self.origins.clear()
        self.missing_count = 0
        self.connected = True
        self.last_heard = now
        self.next_ping = now + self.settings.heartbeat
        self.guard.reopen()

    def lost(self, reason: str) -> None:
        """The connection is gone or silent: shut L1 until a new subscription is confirmed."""
        if self.connected:
            self.stats.flushed(reason)
        self.connected = False
        self.guard.shut()

    def heard(self, now: float) -> None:
        self.last_heard = now

    def ping_due(self, now: float) -> bool:
        if now >= self.next_ping:
            self.next_ping = now + self.settings.heartbeat
            return True
        return False

    def silent_too_long(self, now: float) -> bool:
        return self.connected and now - self.last_heard > self.settings.max_silence

    # -- messages -------------------------------------------------------------------------

    def apply(self, data: bytes, now: float) -> None:
        """Apply one message from the channel."""
        if type(data) is bytes and data.startswith(self.echo_marker):
            return  # an echo of this cache's own message: nothing to decode
        try:
            fields = msgpack.unpackb(data)
            version, origin, seq, op, payload = fields[:5]
        except Exception:
            self.stats.bad_messages += 1
            return
        if version != VERSION or origin == self.origin:
            return
        if (
            type(origin) is not bytes
            or type(seq) is not int
            or type(op) is not int
            or type(payload) is not list
            or not all(type(item) in (bytes, str) for item in payload)
        ):
            self.stats.bad_messages += 1
            return
        self.stats.invalidations_received += 1
        self._track(origin, seq, now)
        if op == KEYS:
            if len(payload) > MAX_PENDING:
                self.overflow()
            else:
                self.guard.invalidate(self.l1_keys(payload))
        elif op == FLUSH:
            self.stats.flushed("clear")
            self.guard.flush(tuple(payload))
        elif op == MATCH and payload and type(payload[0]) is bytes:
            self.guard.drop_where(self.keys.matcher(payload[0], tuple(payload[1:])))
        else:  # a newer writer's op, or a malformed MATCH: what it changed is unknown
            self.stats.flushed("clear")
            self.guard.flush()
        sent = fields[5] if len(fields) > 5 else None
        if type(sent) is float:  # clocks of two hosts may disagree: a negative lag counts as 0
            self.stats.invalidation_lag.observe(max(0.0, self.wall_clock() - sent))

    def l1_keys(self, redis_keys: list[Any]) -> list[Any]:
        """The L1 keys of the Redis keys of this cache among redis_keys."""
        l1_keys = []
        for redis_key in redis_keys:
            if isinstance(redis_key, str):
                redis_key = redis_key.encode("utf-8", "surrogatepass")
            try:
                path, key = self.keys.parse(redis_key)
            except ValueError:
                continue
            l1_keys.append((path, key) if path else key)
        return l1_keys

    # -- the drivers' loop, one message or tick at a time -------------------------------------

    def expect(self, subscriptions: int) -> None:
        """A new connection subscribes to this many channels."""
        self.pending = subscriptions

    def on_message(self, message: dict[str, Any], now: float) -> bool:
        """Handle one message from redis-py's PubSub (or ECHO); True once every subscription
        is confirmed (the driver then turns tracking on, if asked, and calls confirmed())."""
        self.heard(now)
        kind = message["type"]
        if kind in ("subscribe", "ssubscribe"):  # ssubscribe: sharded pub/sub, on Redis Cluster
            self.pending -= 1
            return self.pending == 0
        if kind in ("unsubscribe", "sunsubscribe"):
            # Never asked for: the server ended the subscription (on a cluster, the channel's
            # slot moved to another node). Whatever comes next is unheard: reconnect.
            raise SubscriberLost(f"the server ended the subscription ({kind})")
        if kind in ("message", "smessage"):
            try:
                if message["channel"] == TRACKING_CHANNEL:
                    self.apply_tracking(message["data"])
                else:
                    self.apply(message["data"], now)
            except (TypeError, ValueError, AttributeError, KeyError, IndexError):
                # Whatever is published on the channel must not cost the connection (and so
                # L1): a message that reaches here malformed is counted, nothing else.
                self.stats.bad_messages += 1
        return False

    def drain(self) -> None:
        """Apply tracking invalidations that arrived as RESP3 pushes."""
        pushed = self.pushed
        if len(pushed) > MAX_PENDING:
            del pushed[:]
            self.overflow()
            return
        waiting = pushed[:]
        del pushed[:]  # the same list: the driver's handler appends to it
        for push in waiting:
            self.apply_tracking(push[1])

    def tick(self, now: float) -> Literal["silence", "ping"] | None:
        """What the driver must do now: "silence" (give up the connection), "ping" or None."""
        if not self.connected:
            return None
        self.check_gaps(now)
        if self.silent_too_long(now):
            return "silence"
        return "ping" if self.ping_due(now) else None

    def apply_tracking(self, data: Any) -> None:
        """Apply one __redis__:invalidate message: a list of keys, or None for a flush."""
        if not (
            data is None
            or isinstance(data, (bytes, str))
            or (isinstance(data, list) and all(isinstance(item, (bytes, str)) for item in data))
        ):
            self.stats.bad_messages += 1
            return
        self.stats.invalidations_received += 1
        if data is None:
            self.stats.flushed("clear")
            self.guard.flush()
            return
        self.guard.invalidate(self.l1_keys([data] if isinstance(data, (bytes, str)) else data))

    def _track(self, origin: bytes, seq: int, now: float) -> None:
        track = self.origins.get(origin)
        if track is None:
            if len(self.origins) > 10_000:  # processes come and go; forget the quiet ones
                self.origins.clear()
                self.missing_count = 0
            self.origins[origin] = _OriginTrack(seq)
            return
        if seq > track.highest:
            gap = seq - track.highest - 1
            if gap >= MAX_GAP:
                self.message_lost()
                track.highest = seq
                return
            if self.missing_count + gap > MAX_PENDING:
                self.overflow()
                track.highest = seq
                return
            deadline = now + self.settings.gap_grace
            for missing in range(track.highest + 1, seq):
                track.missing[missing] = deadline
            self.missing_count += gap
            track.highest = seq
        elif track.missing.pop(seq, None) is not None:
            self.missing_count -= 1

    def check_gaps(self, now: float) -> None:
        """A number still missing past its grace period is a lost message: flush L1."""
        for track in self.origins.values():
            if track.missing and min(track.missing.values()) <= now:
                self.message_lost()
                return

    def message_lost(self) -> None:
        self.stats.messages_lost += 1
        self._flush("message_lost")

    def overflow(self) -> None:
        """More pending work than MAX_PENDING: flush L1 rather than hold it all."""
        self._flush("overflow")

    def _flush(self, reason: str) -> None:
        self.stats.flushed(reason)
        for track in self.origins.values():
            track.missing.clear()
        self.missing_count = 0
        self.guard.flush()


# -- invalidation="tracking": Redis server-assisted client-side caching --------------------
#
# On top of the pub/sub channel, the subscriber subscribes to __redis__:invalidate, and a
# connection of its own turns on CLIENT TRACKING ... BCAST PREFIX <this cache's prefix>
# REDIRECT <the subscriber's connection>. Redis then reports every change to a key under the
# prefix, whoever made it: other Redis clients, Lua scripts, expiry and eviction included.
# (Changes by tiercache itself arrive twice, once per route; that is harmless.)


def find_client_id(client_list: list[dict[str, Any]], sockname: Any) -> int | None:
    """The server-side id of the connection whose local address is sockname."""
    if not sockname:
        return None
    host, port = sockname[0], sockname[1]
    for entry in client_list:
        addr = entry.get("addr", "")
        if addr.rsplit(":", 1) == [str(host), str(port)] or addr == f"[{host}]:{port}":
            return int(entry["id"])
    return None


def tracking_is_on(info: Any) -> bool:
    """Whether a CLIENT TRACKINGINFO reply says tracking is (still) on."""
    if isinstance(info, dict):
        flags = info.get(b"flags") or info.get("flags") or []
    else:
        pairs = dict(zip(info[::2], info[1::2], strict=False))
        flags = pairs.get(b"flags") or pairs.get("flags") or []
    return any(flag in (b"on", "on") for flag in flags)


# -- the subscriber's loop, written once for both drivers ------------------------------------


class SubscriberLost(Exception):
    """The subscriber gave up its connection: silent past max_silence, or tracking lost."""


class TrackingRefused(Exception):
    """CLIENT TRACKING cannot be turned on for the subscriber's connection."""


SubscriberPlan = Generator[SubscriberRequest, Any, None]


def subscribe(sh: Shared, state: SubscriberState) -> SubscriberPlan:
    """The invalidation subscriber of one cache, forever: connect, confirm, apply messages,
    heartbeat; on any failure shut L1 (state.lost), back off, and connect again.

    The driver stops it by closing the generator (or cancelling the task awaiting a request)
    and then closes the connections itself."""
    backoff = MIN_BACKOFF
    while True:
        reason = "disconnect"
        try:
            channels = (sh.channel, TRACKING_CHANNEL) if sh.tracking_wanted else (sh.channel,)
            yield Subscribe(channels)
            state.expect(len(channels))
            tracked = False
            while True:
                message = yield Receive(POLL)
                now = time.monotonic()
                if message is not None and state.on_message(message, now):
                    tracked = yield from _start_tracking(sh, state)
                    state.confirmed(now)
                    yield Ready(True)
                    backoff = MIN_BACKOFF
                state.drain()
                action = state.tick(now)
                if action == "silence":
                    reason = "silence"
                    raise SubscriberLost("no word from Redis past max_silence")
                if action == "ping":
                    yield Do.PING
                    # Tracking lives on its own connection: if that was lost, so are invalidations.
                    if tracked and not tracking_is_on((yield Do.TRACKING_INFO)):
                        raise SubscriberLost("CLIENT TRACKING was lost with its connection")
        except Exception as exc:  # any failure of either connection: shut L1, reconnect
            log.debug("tiercache %s: subscriber reconnects (%s): %r", sh.name, reason, exc)
            state.lost(reason)
            sh.stats.reconnects += 1
            yield Ready(False)
            yield Do.DISCONNECT
            yield Sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


def _start_tracking(sh: Shared, state: SubscriberState) -> Generator[SubscriberRequest, Any, bool]:
    """Turn on CLIENT TRACKING BCAST for this cache's prefix, redirected to the subscriber's
    connection; True if on.

    If it cannot the first time (a server without CLIENT TRACKING, or a subscriber connection
    it cannot name, as on a unix socket), the cache stays on pub/sub alone, said once in the
    log. Once tracking has worked, a refusal keeps L1 shut (a failover to a server that will
    not track must not silently drop what tracking promised), logged once a burst."""
    if not sh.tracking_wanted:
        return False
    # Under RESP3 (redis-py's default) the server sends invalidations as pushes, which
    # redis-py hands to a handler instead of returning them as messages.
    sockname = yield WatchPushes(state.pushed)
    yield Do.OPEN_TRACKER
    try:
        client_id = find_client_id((yield Do.CLIENT_LIST), sockname)
        if client_id is None:
            raise TrackingRefused(f"the subscriber's connection ({sockname!r}) is not in CLIENT LIST")
        yield TrackingOn(client_id, sh.keys.cache_prefix)
    except (RedisReplyError, TrackingRefused) as exc:
        yield Do.CLOSE_TRACKER
        reason = exc.__cause__ or exc
        if sh.tracking:
            sh.burst_log.error("tiercache %s: CLIENT TRACKING refused (%s): L1 stays shut", sh.name, reason)
            raise
        log.warning("tiercache %s: CLIENT TRACKING unavailable (%s): using pub/sub only", sh.name, reason)
        sh.tracking_wanted = False
        return False
    sh.tracking = True
    return True
