"""The closed vocabulary between a plan and a driver: what a plan may ask for.

A plan (see plans.py) is a generator that yields one of these and receives its result, or
has an exception thrown in: ``CacheUnavailable`` when Redis did not answer (or the circuit
breaker refused the call), ``RedisReplyError`` when Redis answered with an error reply.

``issue(client, command)`` calls the redis-py method a command stands for, so a driver
carries out any of them the same way, on a client or on a pipeline, blocking or awaited.
``op`` (the Redis command, or a pipeline's name) labels the round trip in metrics. Nothing
here imports a Redis client: the client is whatever object has redis-py's methods.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

_T = TypeVar("_T")


# Requests are values: nothing changes one after it is made. They are not frozen dataclasses
# only because a frozen __init__ costs three times as much (object.__setattr__ per field),
# and a write makes several of them.

# -- one Redis command each ----------------------------------------------------------------


@dataclass(slots=True)
class Get:
    key: bytes
    op: ClassVar[str] = "get"


@dataclass(slots=True)
class MGet:
    keys: list[bytes]
    op: ClassVar[str] = "mget"


@dataclass(slots=True)
class Set:
    """SET key data [PX px] [NX]; px None means no expiry."""

    key: bytes
    data: bytes | int
    px: int | None
    nx: bool = False
    op: ClassVar[str] = "set"


@dataclass(slots=True)
class Delete:
    keys: tuple[bytes, ...]
    op: ClassVar[str] = "delete"


@dataclass(slots=True)
class IncrBy:
    key: bytes
    amount: int
    op: ClassVar[str] = "incrby"


@dataclass(slots=True)
class PTTL:
    key: bytes
    op: ClassVar[str] = "pttl"


@dataclass(slots=True)
class Eval:
    """A Lua script (EVAL) over keys with args; op names what it does in metrics."""

    script: str
    keys: tuple[bytes, ...]
    args: tuple[bytes | int | str, ...]
    op: str = "eval"


@dataclass(slots=True)
class Scan:
    """One SCAN step; the result is (next cursor, keys)."""

    cursor: int
    match: bytes
    count: int
    op: ClassVar[str] = "scan"


@dataclass(slots=True)
class Unlink:
    keys: tuple[bytes, ...]
    op: ClassVar[str] = "unlink"


@dataclass(slots=True)
class Publish:
    channel: bytes
    message: bytes
    op: ClassVar[str] = "publish"


Command = Get | MGet | Set | Delete | PTTL | IncrBy | Eval | Scan | Unlink | Publish
"""Every single Redis command a plan can ask for."""


def issue(client: Any, command: Command) -> Any:
    """Call the redis-py method command stands for on client: a client or a pipeline,
    blocking (the reply) or asyncio (an awaitable). The one place that knows redis-py's
    method names."""
    match command:  # class patterns without arguments: one isinstance each, the most used first
        case Get():
            return client.get(command.key)
        case Set():
            return client.set(command.key, command.data, px=command.px, nx=command.nx)
        case Publish():
            return client.publish(command.channel, command.message)
        case Delete():
            return client.execute_command("DEL", *command.keys)  # a cluster's pipeline refuses client.delete of several
        case MGet():
            return client.execute_command("MGET", *command.keys)  # a cluster's pipeline refuses client.mget
        case Eval():
            # Not client.eval, which a cluster's pipeline refuses; EVAL by name goes to the
            # node of the script's keys (one slot: core/sharding.py).
            return client.execute_command("EVAL", command.script, len(command.keys), *command.keys, *command.args)
        case PTTL():
            return client.pttl(command.key)
        case IncrBy():
            return client.incrby(command.key, command.amount)
        case Scan():
            return client.scan(command.cursor, match=command.match, count=command.count)
        case Unlink():
            return client.execute_command("UNLINK", *command.keys)


def raw_args(command: Command) -> tuple[Any, ...] | None:
    """The command's words, for the commands whose raw reply is the result a plan wants
    (redis-py applies no callback to them): a driver may send these straight down a pooled
    connection. None for the others."""
    match command:
        case Get():
            return (b"GET", command.key)
        case Eval():
            return (b"EVAL", command.script, len(command.keys), *command.keys, *command.args)
        case MGet():
            return (b"MGET", *command.keys)
    return None


@dataclass(slots=True)
class Update:
    """A read-modify-write of one key, atomic in Redis: WATCH key, GET it, change(old bytes
    or None) -> (new bytes, PX or KEEP_TTL, result) or NO_CHANGE, then MULTI, SET, the riders
    (lease revocation, invalidation), EXEC; again from WATCH if the key changed meanwhile.
    When change raises or answers NO_CHANGE nothing is written, but the riders are still
    sent (the invalidation is numbered: receivers must see no gap). The result is change's."""

    key: bytes
    change: Callable[[bytes | None], Any]
    riders: tuple[Command, ...]
    op: str


KEEP_TTL: Any = "keep"  # an Update's SET keeps the key's TTL
UPDATE_ATTEMPTS = 100  # how many times an Update is tried while other clients keep changing its key
CONTENDED = "{op}: other clients kept changing the key ({attempts} attempts)"  # an error reply: Redis answered


def stage_update(pipe: Any, key: bytes, data: bytes, px: Any, riders: tuple[Command, ...]) -> None:
    """Queue an Update's write after MULTI on a watching pipeline (blocking or asyncio: both
    queue without awaiting): SET key (keeping the TTL, or with PX), then the riders."""
    pipe.multi()
    if px is KEEP_TTL:
        pipe.set(key, data, keepttl=True)
    else:
        pipe.set(key, data, px=px)
    for rider in riders:
        issue(pipe, rider)


def update_pause(attempt: int) -> float:
    """Seconds to wait before an Update's next attempt: doubling from 1 ms to 20 ms, with
    jitter, so contending writers drift apart (100 attempts take about 1.5 s at most)."""
    pause: float = min(0.02, 0.001 * 2.0 ** min(attempt, 5)) * (0.5 + random.random() / 2)
    return pause


NO_CHANGE: Any = ("no change",)  # an Update's change found nothing to write


@dataclass(slots=True)
class Pipeline:
    """Several commands in one round trip (MULTI/EXEC when transaction); the result is the
    list of their results. op names the round trip in metrics: the main command's name (a
    write's PUBLISH rides along with it), or set_many."""

    commands: tuple[Command, ...]
    op: str
    transaction: bool = False


# -- not Redis -------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """A user function (loader or writer); the asyncio driver awaits what it returns."""

    func: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(slots=True)
class Background:
    """Run plan (a refresh: core/freshness.py) apart from the caller, who goes on at once:
    a thread of its own (sync driver), a task (asyncio). At most one per key at a time in a
    process: another for the same key is dropped; key None: always run (a plan that holds a
    lease must run, to give it back). The result is None."""

    key: Hashable
    plan: Plan[None]


@dataclass(slots=True)
class Flight:
    """Run plan under the driver's single-flight for key: concurrent flights of one key in
    this process share one run and its outcome (a loader called once)."""

    key: Any
    plan: Plan[Any]


@dataclass(slots=True)
class Pause:
    """Wait this long before going on (a load waiting on another process's lease polls)."""

    seconds: float


Request = Command | Pipeline | Update | Call | Flight | Pause | Background
"""Everything a plan can yield."""

Plan = Generator[Request, Any, _T]
"""An operation written once for both drivers: yields Requests, returns a _T."""


# -- the invalidation subscriber's requests (see invalidation.subscribe) ----------------------
#
# The subscriber runs on connections of its own, outside the breaker and the metrics of
# RedisCall: its failures are what shuts L1 (invariant 3), so the plan sees every one.


class Do(enum.Enum):
    """The subscriber's requests that carry nothing (h11-style sentinels)."""

    PING = "PING on the pub/sub connection (its answer arrives as a message)"
    DISCONNECT = (
        "close the pub/sub and the tracker connections (a broken one may fail to close: it "
        "is gone either way, so the driver swallows that, and bounds the wait)"
    )
    OPEN_TRACKER = "open a connection of its own for CLIENT TRACKING (closing any old one)"
    CLOSE_TRACKER = "close the tracker connection (the server would not track)"
    CLIENT_LIST = "CLIENT LIST TYPE pubsub on the tracker connection: redis-py's list of dicts"
    TRACKING_INFO = "CLIENT TRACKINGINFO on the tracker connection: is tracking still on?"


@dataclass(slots=True)
class Subscribe:
    """Open a new pub/sub connection (closing any old one) and SUBSCRIBE to channels."""

    channels: tuple[bytes, ...]


@dataclass(slots=True)
class Receive:
    """The next pub/sub message (redis-py's dict), or None after timeout seconds."""

    timeout: float


@dataclass(slots=True)
class WatchPushes:
    """Append RESP3 invalidation pushes on the pub/sub connection to pushed; the result is
    that connection's local address (host, port), or None if it has none."""

    pushed: list[Any]


@dataclass(slots=True)
class TrackingOn:
    """CLIENT TRACKING ON REDIRECT client_id BCAST PREFIX prefix, on the tracker connection."""

    client_id: int
    prefix: bytes


@dataclass(slots=True)
class Sleep:
    """Wait this long (the sync driver wakes early when the cache closes)."""

    seconds: float


@dataclass(slots=True)
class Ready:
    """Tell waiters (wait_ready) that L1 serves (True) or does not (False)."""

    serving: bool


SubscriberRequest = Do | Subscribe | Receive | WatchPushes | TrackingOn | Sleep | Ready
"""Everything the subscriber's plan can yield."""


class Stepper(Generic[_T]):
    """A plan, advanced one request at a time: how both drivers run plans, and how tests
    step them by hand (tiercache.testing re-exports it).

    ``request`` is what the plan waits on (None once it is done); ``send(reply)`` answers
    it, ``throw(error)`` makes it fail; ``result`` is what the plan returned. An exception
    the plan raises comes out of the send or throw that caused it."""

    __slots__ = ("_plan", "_value", "done", "request")

    def __init__(self, plan: Generator[Any, Any, _T]) -> None:
        self._plan = plan
        self.done = False
        self.request: Any = None
        try:
            self.request = next(plan)
        except StopIteration as stop:
            self._finish(stop)

    def send(self, reply: Any) -> Any:
        """Answer the current request; the next one (None when the plan is done)."""
        self._check_waiting()
        try:
            self.request = self._plan.send(reply)
        except StopIteration as stop:
            self._finish(stop)
        return self.request

    def throw(self, error: BaseException) -> Any:
        """Fail the current request with error; the next one (None when done)."""
        self._check_waiting()
        try:
            self.request = self._plan.throw(error)
        except StopIteration as stop:
            self._finish(stop)
        return self.request

    @property
    def result(self) -> _T:
        """What the plan returned (AssertionError while it still waits on a request)."""
        assert self.done, f"the plan still waits on {self.request!r}"
        value: _T = self._value
        return value

    def _check_waiting(self) -> None:
        if self.done:
            raise RuntimeError(f"the plan is done (it returned {self._value!r}): nothing to answer")

    def _finish(self, stop: StopIteration) -> None:
        self.done, self._value, self.request = True, stop.value, None
