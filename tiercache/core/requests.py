"""The closed vocabulary between a plan and a driver: what a plan may ask for.

A plan (see plans.py) is a generator that yields one of these and receives its result, or
has an exception thrown in: ``CacheUnavailable`` when Redis did not answer (or the circuit
breaker refused the call), ``RedisReplyError`` when Redis answered with an error reply.

Each Redis request knows the one redis-py method it stands for (``issue``), so a driver
carries out any of them the same way, on a client or on a pipeline, blocking or awaited:
the sync driver calls ``request.issue(client)``, the asyncio driver awaits it. ``op`` names
the Redis command in metrics. Nothing here imports a Redis client: the client is whatever
object has redis-py's methods.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

_T = TypeVar("_T")


# -- one Redis command each ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    key: bytes
    op: ClassVar[str] = "get"

    def issue(self, client: Any) -> Any:
        return client.get(self.key)


@dataclass(frozen=True, slots=True)
class MGet:
    keys: list[bytes]
    op: ClassVar[str] = "mget"

    def issue(self, client: Any) -> Any:
        return client.mget(self.keys)


@dataclass(frozen=True, slots=True)
class Set:
    """SET key data [PX px] [NX]; px None means no expiry."""

    key: bytes
    data: bytes | int
    px: int | None
    nx: bool = False
    op: ClassVar[str] = "set"

    def issue(self, client: Any) -> Any:
        return client.set(self.key, self.data, px=self.px, nx=self.nx)


@dataclass(frozen=True, slots=True)
class Delete:
    keys: tuple[bytes, ...]
    op: ClassVar[str] = "delete"

    def issue(self, client: Any) -> Any:
        return client.delete(*self.keys)


@dataclass(frozen=True, slots=True)
class Exists:
    key: bytes
    op: ClassVar[str] = "exists"

    def issue(self, client: Any) -> Any:
        return client.exists(self.key)


@dataclass(frozen=True, slots=True)
class PTTL:
    key: bytes
    op: ClassVar[str] = "pttl"

    def issue(self, client: Any) -> Any:
        return client.pttl(self.key)


@dataclass(frozen=True, slots=True)
class IncrBy:
    key: bytes
    amount: int
    op: ClassVar[str] = "incrby"

    def issue(self, client: Any) -> Any:
        return client.incrby(self.key, self.amount)


@dataclass(frozen=True, slots=True)
class Eval:
    """A Lua script (EVAL) over keys with args."""

    script: str
    keys: tuple[bytes, ...]
    args: tuple[bytes | int | str, ...]
    op: ClassVar[str] = "eval"

    def issue(self, client: Any) -> Any:
        return client.eval(self.script, len(self.keys), *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class Scan:
    """One SCAN step; the result is (next cursor, keys)."""

    cursor: int
    match: bytes
    count: int
    op: ClassVar[str] = "scan"

    def issue(self, client: Any) -> Any:
        return client.scan(self.cursor, match=self.match, count=self.count)


@dataclass(frozen=True, slots=True)
class Unlink:
    keys: tuple[bytes, ...]
    op: ClassVar[str] = "unlink"

    def issue(self, client: Any) -> Any:
        return client.unlink(*self.keys)


@dataclass(frozen=True, slots=True)
class Publish:
    channel: bytes
    message: bytes
    op: ClassVar[str] = "publish"

    def issue(self, client: Any) -> Any:
        return client.publish(self.channel, self.message)


Command = Union[Get, MGet, Set, Delete, Exists, PTTL, IncrBy, Eval, Scan, Unlink, Publish]
"""Every single Redis command a plan can ask for."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Several commands in one round trip (MULTI/EXEC when transaction); the result is the
    list of their results. op names the round trip in metrics: the main command's name (a
    write's PUBLISH rides along with it), or set_many."""

    commands: tuple[Command, ...]
    op: str
    transaction: bool = False


# -- not Redis -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """A user function (loader or writer); the asyncio driver awaits what it returns."""

    func: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Flight:
    """Run plan under the driver's single-flight for key: concurrent flights of one key in
    this process share one run and its outcome (a loader called once)."""

    key: Any
    plan: Plan[Any]


Request = Union[Command, Pipeline, Call, Flight]
"""Everything a plan can yield."""

Plan = Generator[Request, Any, _T]
"""An operation written once for both drivers: yields Requests, returns a _T."""


# -- the invalidation subscriber's requests (see invalidation.subscribe) ----------------------
#
# The subscriber runs on connections of its own, outside the breaker and the metrics of
# RedisCall: its failures are what shuts L1 (invariant 3), so the plan sees every one.


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Open a new pub/sub connection (closing any old one) and SUBSCRIBE to channels."""

    channels: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Receive:
    """The next pub/sub message (redis-py's dict), or None after timeout seconds."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Ping:
    """PING on the pub/sub connection (its answer arrives as a message)."""


@dataclass(frozen=True, slots=True)
class WatchPushes:
    """Hand RESP3 invalidation pushes on the pub/sub connection to the plan's list; the
    result is that connection's local address (host, port), or None if it has none."""

    pushed: list[Any]


@dataclass(frozen=True, slots=True)
class OpenTracker:
    """Open a connection of its own for CLIENT TRACKING (closing any old one)."""


@dataclass(frozen=True, slots=True)
class CloseTracker:
    """Close the tracker connection (the server would not track)."""


@dataclass(frozen=True, slots=True)
class ClientList:
    """CLIENT LIST TYPE pubsub on the tracker connection: redis-py's list of dicts."""


@dataclass(frozen=True, slots=True)
class TrackingOn:
    """CLIENT TRACKING ON REDIRECT client_id BCAST PREFIX prefix, on the tracker connection."""

    client_id: int
    prefix: bytes


@dataclass(frozen=True, slots=True)
class TrackingInfo:
    """CLIENT TRACKINGINFO on the tracker connection: is tracking still on?"""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the pub/sub and the tracker connections (a broken one may fail to close: it is
    gone either way, so the driver swallows that, and bounds the wait)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Ready:
    """Tell waiters (wait_ready) that L1 serves (True) or does not (False)."""

    serving: bool


SubscriberRequest = Union[
    Subscribe, Receive, Ping, WatchPushes, OpenTracker, CloseTracker, ClientList, TrackingOn, TrackingInfo, Disconnect, Sleep, Ready
]
"""Everything the subscriber's plan can yield."""
