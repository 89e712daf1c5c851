"""Fixtures for AsyncTieredCache (asyncio_mode = auto runs async tests and fixtures)."""

from __future__ import annotations

import pytest

from tiercache import AsyncTieredCache


@pytest.fixture
async def make_acache(redis_server, cache_name):
    made = []

    def make(url=None, **options):
        options.setdefault("name", cache_name)
        cache = AsyncTieredCache.from_url(url or redis_server.url, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


@pytest.fixture
async def acache(make_acache):
    return make_acache()
