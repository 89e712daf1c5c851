"""python -m tiercache tour and verify run end to end; tour finds a Redis where there is none."""

from __future__ import annotations

import pytest
import redis

from tiercache import cli, demo
from tiercache.local import NO_EXTENSIONS


def test_tour_runs_against_a_given_redis(redis_server, capsys):
    assert cli.main(["tour", "--redis", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "again (L1 hit)     -> {'name': 'Ada'} (loader calls: 1)" in out
    assert "another cache reads it from Redis -> {'name': 'Ada'}" in out
    assert "50 concurrent get_or_load on one cold key -> {'COLD-KEY'}, loader calls: 1" in out
    # the scrape is real: the same figures the stats line printed came back over HTTP
    stats_line = next(line for line in out.splitlines() if line.startswith("stats: L1 hits"))
    l1_hits = int(stats_line.split("L1 hits ")[1].split(",")[0])
    assert f'tiercache_requests_total{{cache="demo",result="hit",tier="l1"}} {float(l1_hits)}' in out
    with redis.Redis.from_url(redis_server.url) as client:
        assert not client.keys("tc:demo*")  # the demo cleans up


def test_without_a_redis_an_embedded_one_is_used_and_nothing_left(capsys):
    import os

    from tiercache import TieredCache, embedded

    with demo.redis_for_demo(None) as url, TieredCache.from_url(url, name="d") as cache:
        assert url.startswith("embedded:///") and cache.set("k", 1) and cache.get("k") == 1
        directory = embedded.directory_of(url)
        assert embedded.status(directory)["running"]
    assert "started an embedded Redis in" in capsys.readouterr().out
    assert not os.path.exists(directory)  # stopped and removed


def test_verify_finds_no_read_stale_past_the_bound():
    from tiercache import verify

    report = verify.run(processes=2, keys=10, duration=2.0, l1_ttl=1.0, write_share=0.2, fault_every=0.5)
    assert report["writes"] > 0 and report["reads"] > report["writes"]
    assert report["stale_past_bound"] == 0
    assert report["visible_within"][1.0] == 1.0
    assert report["faults"]  # faults were injected


@pytest.mark.skipif(NO_EXTENSIONS, reason="the checker drives the cache, not the L1 build: run once, compiled")
@pytest.mark.parametrize("kind", ["maxmemory", "cancel", "fork", "write-through"])
def test_verify_with_each_kind_of_fault(kind):
    from tiercache import verify

    # write-through: two pauses of the server, and writes often enough that some land in them
    duration, write_share = (3.0, 0.35) if kind == "write-through" else (2.0, 0.2)
    report = verify.run(
        processes=2, keys=10, duration=duration, l1_ttl=1.0, write_share=write_share, fault_every=0.5, kind=kind
    )
    assert report["writes"] > 0 and report["reads"] > report["writes"] and report["faults"]
    assert report["stale_past_bound"] == 0
    if kind == "write-through":
        assert report["repairs"] > 0  # the server paused past the timeout: writes were repaired


@pytest.mark.skipif(NO_EXTENSIONS, reason="the checker drives the cache, not the L1 build: run once, compiled")
@pytest.mark.parametrize("kind", ["connections", "maxmemory"])
def test_verify_on_a_cluster(redis_cluster, kind):
    from tiercache import verify

    report = verify.run(
        redis_cluster.url, processes=2, keys=10, duration=2.0, l1_ttl=1.0, write_share=0.2, fault_every=0.5, kind=kind
    )
    assert report["writes"] > 0 and report["reads"] > report["writes"] and report["faults"]
    assert report["stale_past_bound"] == 0


def test_verify_refuses_an_unknown_fault_kind():
    from tiercache import verify

    with pytest.raises(ValueError, match="fault kind"):
        verify.run(kind="meteor")


def test_verify_analysis_counts_stale_reads():
    from tiercache.verify import analyse

    writes = [("k", 1, 10.0), ("k", 2, 20.0)]
    reads = [("k", 1, 15.0), ("k", 1, 20.005), ("k", 1, 20.5), ("k", 0, 9.0), ("k", 2, 21.0)]
    report = analyse(writes, reads, l1_ttl=0.4)
    assert report["stale_reads"] == 2 and report["stale_past_bound"] == 1
    assert report["visible_within"][0.010] == 0.5  # write 2 was unseen 500 ms after it
    assert report["visible_within"][0.4] == 0.5
