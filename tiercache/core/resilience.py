"""What keeps a slow or dead Redis from hurting the service: the circuit breaker, the
once-a-burst error log, the wrapper every round trip goes through, and the fail-fast
defaults of the clients tiercache makes (invariant 5 in shared/DESIGN.md).

No I/O here: the drivers say which of their client's exceptions mean "Redis did not answer"
(RedisErrors) and do the calls inside ``with RedisCall(shared, op):``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from .._validate import ttl_seconds
from ..errors import CacheError, CacheUnavailable, RedisReplyError

if TYPE_CHECKING:
    from .shared import Shared

log = logging.getLogger(__name__)

# Settings for a client tiercache makes (from_url): short timeouts and no retries, because
# the circuit breaker decides when to try again; a blocking pool, so a burst of callers past
# max_connections queues for a connection (up to `timeout` seconds) instead of failing.
CLIENT_DEFAULTS: Final[dict[str, Any]] = {
    "socket_timeout": 0.5,
    "socket_connect_timeout": 0.5,
    "health_check_interval": 15,
    "max_connections": 100,
    "timeout": 2.0,
}


def client_options(options: dict[str, Any], no_retry: Any) -> dict[str, Any]:
    """CLIENT_DEFAULTS with no_retry (the driver's redis-py Retry that never retries), then
    the caller's options on top."""
    return {**CLIENT_DEFAULTS, "retry": no_retry, **options}


class RedisErrors(NamedTuple):
    """How a driver's client fails: the exceptions that mean Redis did not answer (they feed
    the breaker and degrade reads), the base of error replies (WRONGTYPE, OOM, ...), and
    those that mean this process has no free connection (busy: not Redis's fault, so the
    breaker is not told; checked first, as they may subclass the unavailable ones)."""

    unavailable: tuple[type[BaseException], ...]
    reply: tuple[type[BaseException], ...]
    busy: tuple[type[BaseException], ...] = ()


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Stops calls to a Redis that keeps failing, and lets one probe through now and then.

    closed: calls go through; `failure_threshold` failures in a row open it. open: calls are
    refused at once for `reset_timeout` seconds. half_open: one probe goes through; its
    success closes the breaker, its failure opens it again.
    """

    CLOSED: Final = "closed"
    OPEN: Final = "open"
    HALF_OPEN: Final = "half_open"

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout: float = 2.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"breaker_threshold must be an int >= 1, got {failure_threshold!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = ttl_seconds(reset_timeout, "breaker_reset")
        self._timer = timer
        self._lock = threading.Lock()
        self.state: BreakerState = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a call go to Redis now?"""
        if self.state == self.CLOSED:
            return True
        with self._lock:
            if self.state == self.OPEN and self._timer() - self._opened_at >= self.reset_timeout:
                self.state = self.HALF_OPEN
                self._probing = False
            if self.state == self.HALF_OPEN and not self._probing:
                self._probing = True
                return True
            return False  # open, or half-open with its probe out

    @property
    def reported_state(self) -> BreakerState:
        """The state as of now, for stats and metrics: an open breaker whose reset_timeout
        has passed is half_open, as the next call will find it (state itself changes only
        when a call asks; an idle process would otherwise report "open" long after Redis
        came back)."""
        if self.state == self.OPEN and self._timer() - self._opened_at >= self.reset_timeout:
            return self.HALF_OPEN
        return self.state

    def success(self) -> None:
        """A call got an answer: close."""
        if self.state != self.CLOSED or self._failures:
            with self._lock:
                self.state = self.CLOSED
                self._failures = 0
                self._probing = False

    def abandon(self) -> None:
        """A call ended with no verdict on Redis (cancelled, or failed on our side): if it was
        the half-open probe, let another one through rather than wait on it forever."""
        if self.state == self.HALF_OPEN and self._probing:
            with self._lock:
                self._probing = False

    def failure(self) -> None:
        """A call got no answer: open after enough of them, or at once while probing."""
        with self._lock:
            self._failures += 1
            if self.state == self.HALF_OPEN or self._failures >= self.failure_threshold:
                self.state = self.OPEN
                self._opened_at = self._timer()
                self._probing = False


class BurstLog:
    """Logs the first error of a burst, then at most one summary line per `interval`."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -math.inf
        self._suppressed = 0

    def error(self, message: str, *args: Any) -> None:
        """Log message % args as a warning, unless one was logged less than interval ago."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            if self._suppressed:
                message += " (%d more since the last report)"
                args = (*args, self._suppressed)
            log.warning(message, *args)
            self._last = now
            self._suppressed = 0
        else:
            self._suppressed += 1


def reply_error(shared: Shared, op: str, exc: BaseException) -> RedisReplyError:
    """What a caller sees of an error reply Redis gave to op (its __cause__ is set by the
    raiser, or by the one that hands it to several callers)."""
    return RedisReplyError(f"cache {shared.name!r}: Redis {op}: {exc}")


class RedisCall:
    """What both drivers do around one round trip to Redis: ``with RedisCall(shared, op):``.

    Refused at once (CacheUnavailable) while the breaker is open; timed into the op's
    histogram. Every call gives the breaker a verdict, so a half-open probe always resolves:
    an answer closes it (an error reply is an answer too, raised as RedisReplyError); an
    error that means Redis is not answering is counted, told to the breaker and raised as
    CacheUnavailable; no free connection in this process's pool is counted apart and raised
    as CacheUnavailable without telling the breaker; anything else (a cancelled call)
    abandons the call. The client's own
    exception is the __cause__ of what is raised."""

    __slots__ = ("breaker", "op", "shared", "started")

    def __init__(self, shared: Shared, op: str, breaker: CircuitBreaker | None = None) -> None:
        self.shared = shared
        self.op = op
        self.breaker = shared.breaker if breaker is None else breaker  # on a cluster: the master's

    def __enter__(self) -> None:
        sh = self.shared
        if not self.breaker.allow():
            sh.stats.short_circuits += 1
            sh.topology_stale = True  # on a cluster: the master may have been replaced meanwhile
            raise CacheUnavailable(f"cache {sh.name!r}: Redis is failing, circuit open")
        self.started = sh.clock()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        sh = self.shared
        sh.stats.l2_timed(self.op, sh.clock() - self.started)
        breaker = self.breaker
        if exc is None:
            breaker.success()
        elif isinstance(exc, sh.errors.busy):
            breaker.abandon()
            sh.stats.pool_exhausted += 1
            raise CacheUnavailable(f"cache {sh.name!r}: no free Redis connection: {exc}") from exc
        elif isinstance(exc, sh.errors.unavailable):
            sh.l2_failed(self.op, exc, breaker)
            raise CacheUnavailable(f"cache {sh.name!r}: {exc}") from exc
        elif isinstance(exc, sh.errors.reply):
            breaker.success()  # Redis answered
            raise reply_error(sh, self.op, exc) from exc
        else:
            breaker.abandon()
        return False


def own_copy(exc: BaseException) -> BaseException:
    """A copy of one batch's failure for each of its callers: the same class, message and
    cause (one exception object raised in many tasks or threads would collect all their
    tracebacks, and they would race to set them). Exceptions that are not tiercache's own
    are shared as they are."""
    if isinstance(exc, CacheError):
        own = type(exc)(*exc.args)
        own.__cause__ = exc.__cause__
        return own
    return exc
