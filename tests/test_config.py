"""Caches from configuration: a mapping, environment variables, a YAML file."""

from __future__ import annotations

import math

import pytest

from tiercache import AsyncTieredCache, ConfigError, TieredCache


def test_a_mapping_makes_the_cache_from_url_would(redis_server, cache_name):
    config = {
        "url": redis_server.url,
        "name": cache_name,
        "default_ttl": 60,
        "key_prefix": "cfg",
        "l1": {"maxsize": 50, "ttl": 5, "policy": "s3fifo"},
        "compression": None,
        "invalidation": "pubsub",
        "redis": {"socket_timeout": 0.25, "connect_timeout": 0.3, "max_connections": 7},
    }
    with TieredCache.from_config(config) as cache:
        assert cache.name == cache_name and cache.l1.maxsize == 50
        assert cache.redis_key("k") == f"cfg:{cache_name}:k".encode()
        pool = cache.redis.connection_pool
        assert pool.connection_kwargs["socket_timeout"] == 0.25
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.3
        assert pool.max_connections == 7
        cache.set("k", {"a": 1})
        assert cache.get("k") == {"a": 1}
        assert 0 < cache.ttl("k") <= 60


def test_flat_names_work_as_well_as_nested_ones(redis_server, cache_name):
    with TieredCache.from_config({"url": redis_server.url, "name": cache_name, "l1_maxsize": 9}) as cache:
        assert cache.l1.maxsize == 9


def test_the_environment_gives_the_same_fields_as_text(redis_server, cache_name):
    environ = {
        "APP_URL": redis_server.url,
        "APP_NAME": cache_name,
        "APP_L1_MAXSIZE": "12",
        "APP_DEFAULT_TTL": "inf",
        "APP_LEASE": "off",
        "APP_SOCKET_TIMEOUT": "0.4",
        "OTHER_THING": "ignored",
    }
    with TieredCache.from_env("APP_", environ=environ) as cache:
        assert cache.l1.maxsize == 12
        assert cache._shared.lease is False
        assert cache.redis.connection_pool.connection_kwargs["socket_timeout"] == 0.4
        cache.set("forever", 1)
        assert cache.ttl("forever") == math.inf


def test_the_environment_is_read_by_default(monkeypatch, redis_server, cache_name):
    monkeypatch.setenv("TIERCACHE_URL", redis_server.url)
    monkeypatch.setenv("TIERCACHE_NAME", cache_name)
    monkeypatch.setenv("TIERCACHE_NO_EXTENSIONS", "")  # the package's own switch, not a field
    with TieredCache.from_env() as cache:
        assert cache.name == cache_name
    monkeypatch.setenv("TIERCACHE_L1_MAXSZE", "5")
    with pytest.raises(ConfigError, match="unknown configuration field 'l1_maxsze'"):
        TieredCache.from_env()


@pytest.mark.parametrize(
    "config, message",
    [
        ({"name": "c", "l1_maxsize": -1}, "'l1_maxsize' must be a whole number"),
        ({"name": "c", "l1": {"policy": "fifo"}}, "'l1_policy' must be one of 'lru', 's3fifo'"),
        ({"name": "c", "l1": {"size": 3}}, "unknown configuration field l1.size; l1 takes: maxsize, ttl, policy"),
        ({"name": "c", "serializer": "json"}, "'serializer' must be one of 'msgpack', 'pickle'"),
        ({"name": "c", "invalidation": "push"}, "'invalidation' must be one of 'pubsub', 'tracking', None"),
        ({"name": "c", "default_ttl": -5}, "'default_ttl' must be a positive number of seconds"),
        ({"name": "c", "lease": "maybe"}, "'lease' must be true or false"),
        ({"name": "c", "socket_timeout": "soon"}, "'socket_timeout' must be a number"),
        ({"name": "c", "l1_maxsize": True}, "'l1_maxsize' must be a whole number"),
        ({"name": "c", "colour": "blue"}, "unknown configuration field 'colour'; the fields are: "),
        ({"l1_maxsize": 3}, "'name' is required"),
        ({"name": ""}, "'name' must be a non-empty string"),
    ],
)
def test_a_bad_config_raises_one_error_naming_the_field(config, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        TieredCache.from_config(config)
    assert isinstance(raised.value, ValueError)  # and a CacheError


def test_a_config_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        TieredCache.from_config([("name", "c")])  # type: ignore[arg-type]


def test_a_yaml_file(tmp_path, redis_server, cache_name):
    path = tmp_path / "cache.yaml"
    path.write_text(
        f"tiercache:\n  url: {redis_server.url}\n  name: {cache_name}\n  l1:\n    maxsize: 33\n  default_ttl: 30\n"
    )
    with TieredCache.from_config_file(path) as cache:
        assert cache.l1.maxsize == 33
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TieredCache.from_config_file(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TieredCache.from_config_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        TieredCache.from_config_file(tmp_path / "missing.yaml")


async def test_the_async_cache_from_config(redis_server, cache_name):
    async with AsyncTieredCache.from_config({"url": redis_server.url, "name": cache_name, "l1_maxsize": 4}) as cache:
        assert cache.l1.maxsize == 4
        await cache.set("k", 1)
        assert await cache.get("k") == 1
