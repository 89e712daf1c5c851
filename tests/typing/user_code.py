"""A service's strictly typed use of tiercache: tests/test_mypy.py checks that mypy --strict
accepts it and infers what assert_type says (it is type-checked, never run)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from typing_extensions import assert_type

from tiercache import AsyncTieredCache, Key, LocalCache, TieredCache
from tiercache.metrics import CacheCollector


@dataclasses.dataclass
class User:
    id: int
    name: str


def load_user(key: str) -> User:
    return User(1, key)


async def load_user_async(key: str) -> User:
    return User(1, key)


def sync_service(cache: TieredCache) -> None:
    assert_type(cache.get("user:1"), Any)
    assert_type(cache.get("user:1", model=User), User | None)
    assert_type(cache.get("user:1", 0, User), User | int)
    assert_type(cache.get_or_load("user:1", load_user), User)
    assert_type(cache.get_or_load("user:1", load_user, ttl=60), User)
    assert_type(cache.set("user:1", User(1, "Ada"), ttl=30), bool)
    assert_type(cache.expire("user:1", timedelta(minutes=5)), bool)
    assert_type(cache.delete(b"raw-key"), bool)
    assert_type(cache.delete_many(["a", "b"]), int)
    assert_type(cache.get_many(["a", "b"]), dict[Key, Any])
    assert_type(cache.ttl("a"), float | None)
    assert_type(cache.incr("hits"), int)
    tenant = cache.namespace("tenant42")
    assert_type(tenant, TieredCache)
    assert_type(tenant.namespace("users").set("u", 1), bool)
    assert_type(cache.stats(), dict[str, Any])
    assert_type(cache.l1, LocalCache)
    CacheCollector(cache, registry=None)


async def async_service(cache: AsyncTieredCache) -> None:
    assert_type(await cache.get("user:1"), Any)
    assert_type(await cache.get("user:1", model=User), User | None)
    assert_type(await cache.get_or_load("user:1", load_user_async), User)
    assert_type(await cache.get_or_load("user:1", load_user), User)
    assert_type(await cache.set("k", 1), bool)
    assert_type(cache.namespace("t"), AsyncTieredCache)
    assert_type(await cache.namespace("t").exists("k"), bool)


def construction() -> None:
    with TieredCache.from_url("redis://127.0.0.1:6379/0", name="users", l1_maxsize=1000, l1_ttl=None) as cache:
        assert_type(cache, TieredCache)
    local = LocalCache(maxsize=100, ttl=5.0)
    local["k"] = 1
    assert_type(local.get("k"), Any)
