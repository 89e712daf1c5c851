"""Hot keys that never make a reader wait: early refresh, stale-while-revalidate,
stale-if-error (RFC 5861's names; XFetch, Vattani et al., VLDB 2015, for the early one).

How a value outlives its TTL: a value written while any of the three is on carries the
extended header (codec.EXTENDED): its deadline is a logical expiry that every reader
enforces (a read past it is a miss: `get`, `get_many`, `exists`, `ttl`), and the last
load's duration, which early refresh needs in every process. Redis keeps the value for the
TTL plus the longer of the two stale windows (its PX), so a reader with a loader can still
find it there after the logical expiry:

* within stale_while_revalidate of the expiry, the reader gets the old value at once and one
  refresh runs in the background (one in the fleet: it needs the key's load lease);
* past that but within stale_if_error, the reader loads (under the lease, as on a miss), and
  if the loader raises, it gets the old value instead (the error is counted and logged once
  per burst);
* otherwise it is a miss.

Early refresh (XFetch): a read from Redis of a value that is still fresh refreshes it in
the background when ``now + delta * (1 + beta * -ln(random())) >= deadline``, delta being the
last load's duration: XFetch's draw, plus the load's own time so that the new value lands
before the old one expires (and always when the next look could come too late). The closer
the expiry and the slower the loader, the likelier; the lease makes it one refresh in the
fleet. An L1 copy of such a value expires early too, at a point drawn the same way
(Freshness.l1_ttl), so that hot readers come back to Redis in time, and each process at its
own moment.

A refresh overwrites the value only if it still holds the lease (every write of the key
revokes it), so a write meanwhile always wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from .._validate import ttl_seconds
from ..codec import EARLY_BETA, WINDOW_L1_TTL, early_l1_ttl, refresh_margin_ms

DEFAULT_BETA: Final = EARLY_BETA


@dataclass(frozen=True, slots=True)
class Freshness:
    """What a read or a write does about expiry: early refresh's beta (0: off) and the two
    stale windows in ms (0: none)."""

    beta: float = 0.0
    stale_while_revalidate_ms: int = 0
    stale_if_error_ms: int = 0
    # Whether values are written with the extended header (any of the three is on): read on
    # every write, so kept rather than worked out each time.
    extended: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "extended", bool(self.beta or self.stale_while_revalidate_ms or self.stale_if_error_ms)
        )

    @property
    def window_ms(self) -> int:
        """How much longer than its TTL Redis keeps a value."""
        return max(self.stale_while_revalidate_ms, self.stale_if_error_ms)

    def px(self, ttl_ms: int | None, extended: bool) -> int | None:
        """Redis PX for a value of ttl_ms (None: no expiry) written with or without the
        extended header (a plain integer has none: no window, nothing would enforce it)."""
        if ttl_ms is None or not extended:
            return ttl_ms
        return ttl_ms + self.window_ms

    def with_call(self, early_refresh: Any, stale_while_revalidate: Any, stale_if_error: Any) -> Freshness:
        """This, with a call's own settings where it gives them (None: the cache's)."""
        if early_refresh is None and stale_while_revalidate is None and stale_if_error is None:
            return self
        return Freshness(
            self.beta if early_refresh is None else beta_of(early_refresh),
            self.stale_while_revalidate_ms if stale_while_revalidate is None else window_ms(stale_while_revalidate),
            self.stale_if_error_ms if stale_if_error is None else window_ms(stale_if_error),
        )

    def margin_ms(self, delta_ms: int) -> float:
        """codec.refresh_margin_ms with this beta."""
        return refresh_margin_ms(delta_ms, self.beta)

    def refresh_early(self, deadline: int, delta_ms: int, now_ms: float) -> bool:
        """Whether a read (from Redis) of a fresh value at now_ms should refresh it: XFetch
        (margin_ms), and always once the next look at Redis could come too late for a load
        to land in time (a load may take longer than the last one, and a thread time to start:
        twice its duration, plus the longest an L1 copy waits in the margin)."""
        if not self.beta or not deadline:
            return False
        left = deadline - now_ms
        return left <= 2 * delta_ms + WINDOW_L1_TTL * 1000.0 or left <= self.margin_ms(delta_ms)

    def l1_ttl(self, deadline: int, delta_ms: int, now_ms: float, cap: float) -> float:
        """How long an L1 copy of a fresh value with the extended header may live
        (codec.early_l1_ttl, with this beta, or XFetch's 1.0 when this call has none: another
        process may refresh early, and its readers need their chance)."""
        return early_l1_ttl(deadline, delta_ms, now_ms, cap, self.beta or EARLY_BETA)


def beta_of(early_refresh: Any) -> float:
    """early_refresh as XFetch's beta: True is 1.0, False 0; a number is beta itself."""
    if early_refresh is True:
        return DEFAULT_BETA
    if early_refresh is False:
        return 0.0
    number = isinstance(early_refresh, (int, float)) and not isinstance(early_refresh, bool)
    if number and math.isfinite(early_refresh) and early_refresh >= 0:
        return float(early_refresh)
    raise ValueError(f"early_refresh must be True, False or a beta >= 0 (1.0 is XFetch's), got {early_refresh!r}")


def window_ms(seconds: Any) -> int:
    """A stale window in ms (0 or None: none)."""
    if seconds is None or seconds == 0:
        return 0
    value = ttl_seconds(seconds, "stale window")
    if not math.isfinite(value):
        raise ValueError(f"a stale window must be finite, got {seconds!r}")
    return max(1, round(value * 1000))


def settings(early_refresh: Any, stale_while_revalidate: Any, stale_if_error: Any) -> Freshness:
    """A cache's defaults from its options (None: none), checked."""
    return Freshness(
        beta_of(False if early_refresh is None else early_refresh),
        window_ms(stale_while_revalidate),
        window_ms(stale_if_error),
    )
