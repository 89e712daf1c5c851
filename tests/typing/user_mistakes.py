"""Mistakes a strict type checker must catch (tests/test_mypy.py expects an error on each
line marked E: and no other)."""

from __future__ import annotations

from tiercache import AsyncTieredCache, TieredCache


def load(key: str) -> int:
    return 1


def mistakes(cache: TieredCache, acache: AsyncTieredCache) -> None:
    cache.get(42)  # E: a key is str or bytes
    cache.set("k", 1, ttl="soon")  # E: ttl is seconds
    cache.get_or_load(b"k", load)  # E: the loader takes str keys
    TieredCache.from_url("redis://", name="x", l1_maxsize="big")  # E: an option of the wrong type
    TieredCache.from_url("redis://", name="x", l1_max_size=10)  # E: an option that does not exist
    done: bool = acache.set("k", 1)  # noqa: F841  # E: an async method gives a coroutine
