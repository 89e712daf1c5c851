"""Fixtures for AsyncTieredCache (asyncio_mode = auto runs async tests and fixtures)."""

from __future__ import annotations

import pytest

from tiercache import AsyncTieredCache


@pytest.fixture
async def make_acache(l2_url, cache_name):
    made = []

    async def make(url=None, **options):
        options.setdefault("name", cache_name)
        cache = AsyncTieredCache.from_url(url or l2_url, **options)
        made.append(cache)
        assert await cache.wait_ready(10), "the invalidation subscription was not confirmed"
        return cache

    yield make
    for cache in made:
        await cache.close()


@pytest.fixture
async def acache(make_acache):
    return await make_acache()
