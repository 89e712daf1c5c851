"""python -m tiercache demo: runs end to end, and finds a Redis where there is none."""

from __future__ import annotations

import redis

from tiercache import cli
from tiercache.testing import free_port


def test_demo_runs_against_a_given_redis(redis_server, capsys):
    assert cli.main(["demo", "--redis", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "again (L1 hit)     -> {'name': 'Ada'} (loader calls: 1)" in out
    assert "another cache reads it from Redis -> {'name': 'Ada'}" in out
    assert "50 concurrent get_or_load on one cold key -> {'COLD-KEY'}, loader calls: 1" in out
    with redis.Redis.from_url(redis_server.url) as client:
        assert not client.keys("tc:demo*")  # the demo cleans up


def test_demo_starts_an_embedded_redis_when_none_answers(monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_REDIS", f"redis://127.0.0.1:{free_port()}/0")
    with cli.redis_for_demo(None) as url, redis.Redis.from_url(url) as client:
        assert client.ping()
    assert "started an embedded redis-server" in capsys.readouterr().out
