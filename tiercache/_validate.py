"""Argument checks shared by the compiled and the pure L1, so both raise the same errors."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

Seconds = float | timedelta
"""A duration argument: seconds (int or float; math.inf for never) or a timedelta."""

POLICIES = ("lru", "s3fifo")

# Entry indices are 32-bit in the compiled table; one value is kept free as "no entry".
MAX_MAXSIZE = 2**31 - 2


def check_maxsize(maxsize: Any) -> int | float:
    """Return maxsize as an int in [0, MAX_MAXSIZE], or math.inf (unbounded); raise naming
    the argument otherwise. 0 is a cache that stores nothing (how cachetools users switch
    caching off)."""
    if isinstance(maxsize, float) and maxsize == math.inf:
        return math.inf
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int or math.inf, got {type(maxsize).__name__}")
    if not 0 <= maxsize <= MAX_MAXSIZE:
        raise ValueError(f"maxsize must be between 0 and {MAX_MAXSIZE} or math.inf, got {maxsize}")
    return maxsize


def slot_limit(maxsize: int | float) -> int:
    """The number of entries a cache of this (checked) maxsize may hold: math.inf is the
    largest count the compiled table can number."""
    return MAX_MAXSIZE if maxsize == math.inf else int(maxsize)


def check_policy(policy: Any) -> int:
    """Return the policy's number (0 lru, 1 s3fifo), or raise naming the argument."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    return POLICIES.index(policy)


def ttl_seconds(ttl: Any, name: str = "ttl") -> float:
    """Seconds from a ttl given as int, float or timedelta; inf means never expires.

    None is handled by the caller (it means "the cache default"); anything that is not a
    positive number of seconds raises, so a typo cannot store an entry that is already dead.
    """
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, a timedelta or None, got {type(ttl).__name__}")
    else:
        seconds = float(ttl)
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {ttl!r}")
    return seconds


def default_ttl_seconds(ttl: Any) -> float:
    """The cache-wide default: None means entries never expire."""
    return math.inf if ttl is None else ttl_seconds(ttl, "ttl")


def check_buckets(bounds: Any) -> tuple[float, ...]:
    """Histogram upper bounds as floats: at least one, finite, strictly increasing (the
    +Inf bucket is implied)."""
    try:
        floats = tuple(float(bound) for bound in bounds)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"buckets must be numbers, got {bounds!r}") from exc
    if not floats:
        raise ValueError("buckets must hold at least one upper bound")
    if not all(math.isfinite(bound) for bound in floats):
        raise ValueError(f"buckets must be finite (+Inf is implied), got {bounds!r}")
    if any(a >= b for a, b in zip(floats, floats[1:], strict=False)):
        raise ValueError(f"buckets must be strictly increasing, got {bounds!r}")
    return floats
