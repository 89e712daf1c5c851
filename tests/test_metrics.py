"""Prometheus metrics: every sample after a known sequence of operations, the HTTP endpoint,
prometheus_client's multiprocess mode with two worker processes, and registration rules."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import urllib.request

import msgpack
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tiercache import TieredCache
from tiercache.codec import KeyCodec
from tiercache.core.guard import FillGuard
from tiercache.core.invalidation import KEYS, VERSION, BusSettings, Publisher, SubscriberState
from tiercache.core.stats import TierStats
from tiercache.local import L1Gate, LocalCache
from tiercache.metrics import CacheCollector, MultiprocessMirror, start_http_server

from .conftest import FakeTimer, wait_until


def samples(registry):
    """{(sample name, frozenset of labels without cache): value} of one cache in registry."""
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = dict(sample.labels)
            labels.pop("cache")
            found[(sample.name, frozenset(labels.items()))] = sample.value
    return found


def value(registry, name, cache, **labels):
    return registry.get_sample_value(name, {"cache": cache, **labels})


def histogram(name, labels, counts, total, bounds):
    """The samples of one histogram: counts per bucket (not cumulative), their sum."""
    expected = {}
    running = 0
    for bound, count in zip((*bounds, math.inf), counts):
        running += count
        le = "+Inf" if bound == math.inf else repr(float(bound))
        expected[(name + "_bucket", frozenset({**labels, "le": le}.items()))] = running
    expected[(name + "_count", frozenset(labels.items()))] = running
    expected[(name + "_sum", frozenset(labels.items()))] = total
    return expected


# -- every sample, exactly ------------------------------------------------------------------


def test_every_sample_after_a_known_sequence(make_cache, cache_name):
    from tiercache.core.stats import L2_BUCKETS, LAG_BUCKETS, LOAD_BUCKETS

    registry = CollectorRegistry()
    cache = make_cache(l1_maxsize=3)
    other = make_cache()  # another instance of the same cache: its writes reach `cache` by the bus
    clock = FakeTimer(start=0.0)  # durations: only loaders move it, so every Redis call takes 0 s
    cache._shared.clock = clock
    cache.register_metrics(registry)

    def slow_loader(key):
        clock.advance(0.2)
        return key.upper()

    def failing_loader(key):
        clock.advance(0.04)
        raise LookupError(key)

    cache.set("a", 1)  # Redis: set (with its PUBLISH); L1: a
    assert cache.get("a") == 1  # L1 hit
    assert cache.get("b") is None  # L1 miss, Redis get: miss
    assert cache.get_or_load("c", slow_loader) == "C"  # L1 miss, lease taken, load 0.2 s, filled; L1: a c
    assert cache.get("c") == "C"  # L1 hit
    with pytest.raises(LookupError):
        cache.get_or_load("d", failing_loader)  # L1 miss, lease taken, load error after 0.04 s, released
    received = cache.stats()["invalidations_received"]
    other.set("e", "E")  # (not an int: plain ints are stored bare, and reading one asks PTTL)
    assert wait_until(lambda: cache.stats()["invalidations_received"] == received + 1)
    assert cache.get("e") == "E"  # L1 miss, Redis get: hit; L1: a c e
    cache.set("f", 6)  # Redis: set; L1 full: a (least recent) evicted for f
    assert cache.delete("f") is True  # Redis: delete; L1: c e

    name = cache.name
    expected = {
        ("tiercache_requests_total", frozenset({"tier": "l1", "result": "hit"}.items())): 2,
        ("tiercache_requests_total", frozenset({"tier": "l1", "result": "miss"}.items())): 4,
        ("tiercache_requests_total", frozenset({"tier": "l2", "result": "hit"}.items())): 1,
        ("tiercache_requests_total", frozenset({"tier": "l2", "result": "miss"}.items())): 3,
        ("tiercache_l1_bypassed_total", frozenset()): 0,
        ("tiercache_loads_total", frozenset({"result": "success"}.items())): 1,
        ("tiercache_load_leases_total", frozenset({"result": "taken"}.items())): 2,
        ("tiercache_load_leases_total", frozenset({"result": "waited"}.items())): 0,
        ("tiercache_load_leases_total", frozenset({"result": "timed_out"}.items())): 0,
        ("tiercache_load_leases_total", frozenset({"result": "revoked"}.items())): 0,
        ("tiercache_refreshes_total", frozenset({"result": "early"}.items())): 0,
        ("tiercache_refreshes_total", frozenset({"result": "failed"}.items())): 0,
        ("tiercache_failovers_total", frozenset()): 0,
        ("tiercache_stale_served_total", frozenset({"reason": "revalidating"}.items())): 0,
        ("tiercache_stale_served_total", frozenset({"reason": "error"}.items())): 0,
        ("tiercache_loads_total", frozenset({"result": "error"}.items())): 1,
        ("tiercache_l2_decode_errors_total", frozenset()): 0,
        ("tiercache_l2_short_circuits_total", frozenset()): 0,
        ("tiercache_l2_pool_exhausted_total", frozenset()): 0,
        ("tiercache_write_failures_total", frozenset()): 0,
        ("tiercache_repairs_pending", frozenset()): 0,
        ("tiercache_repairs_total", frozenset()): 0,
        ("tiercache_l1_evictions_total", frozenset({"cause": "size"}.items())): 1,
        ("tiercache_l1_evictions_total", frozenset({"cause": "expired"}.items())): 0,
        ("tiercache_l1_entries", frozenset()): 2,
        ("tiercache_l1_capacity", frozenset()): 3,
        ("tiercache_invalidations_sent_total", frozenset()): 3,  # set a, set f, delete f
        ("tiercache_invalidations_received_total", frozenset()): received + 1,
        ("tiercache_invalidation_messages_lost_total", frozenset()): 0,
        ("tiercache_invalidation_bad_messages_total", frozenset()): 0,
        ("tiercache_subscriber_reconnects_total", frozenset()): 0,
        ("tiercache_l1_fills_dropped_total", frozenset()): 0,
        ("tiercache_subscriber_connected", frozenset()): 1,
        ("tiercache_l1_serving", frozenset()): 1,
        ("tiercache_breaker_state", frozenset()): 0,
    }
    for reason in ("disconnect", "silence", "message_lost", "clear", "overflow"):
        expected[("tiercache_l1_flushes_total", frozenset({"reason": reason}.items()))] = 0
    expected.update(histogram("tiercache_load_duration_seconds", {}, [0] * 5 + [1, 0, 1] + [0] * 7, 0.24, LOAD_BUCKETS))
    # get: b, e; get_or_lease: c, d; fill_leased: the loaded c; release_lease: d's, after its
    # loader failed; set: a, f; delete: f. Each took 0 s on the fake clock.
    calls_by_op = (("get", 2), ("get_or_lease", 2), ("fill_leased", 1), ("release_lease", 1), ("set", 2), ("delete", 1))
    for op, calls in calls_by_op:
        expected.update(histogram("tiercache_l2_duration_seconds", {"op": op}, [calls] + [0] * 13, 0.0, L2_BUCKETS))
        for reason in ("ConnectionError", "TimeoutError"):  # there from the op's first call, at 0
            expected[("tiercache_l2_errors_total", frozenset({"op": op, "reason": reason}.items()))] = 0
    lag = cache.stats()["invalidation_lag"]
    assert lag["count"] == received + 1  # one observation per message from another process
    expected.update(histogram("tiercache_invalidation_lag_seconds", {}, _per_bucket(lag), lag["sum"], LAG_BUCKETS))

    got = samples(registry)
    assert got.keys() == expected.keys()
    for key, figure in expected.items():
        assert got[key] == pytest.approx(figure, abs=1e-12), key
    assert value(registry, "tiercache_requests_total", name, tier="l1", result="hit") == 2


def _per_bucket(histogram_dict):
    cumulative = list(histogram_dict["buckets"].values())
    return [count - below for count, below in zip(cumulative, [0, *cumulative[:-1]])]


def test_stats_carries_the_same_figures_and_hit_ratios(make_cache):
    cache = make_cache()
    stats = cache.stats()
    assert stats["l1_hit_ratio"] is None and stats["l2_hit_ratio"] is None and stats["hit_ratio"] is None
    cache.set("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("missing")
    stats = cache.stats()
    assert (stats["l1_hits"], stats["l1_misses"], stats["l2_hits"], stats["l2_misses"]) == (2, 1, 0, 1)
    assert stats["l1_hit_ratio"] == pytest.approx(2 / 3)
    assert stats["l2_hit_ratio"] == 0.0
    assert stats["hit_ratio"] == pytest.approx(2 / 3)

    registry = CollectorRegistry()
    cache.register_metrics(registry)
    assert value(registry, "tiercache_requests_total", cache.name, tier="l1", result="hit") == stats["l1_hits"]
    assert (
        value(registry, "tiercache_l2_duration_seconds_count", cache.name, op="get")
        == stats["l2_duration"]["get"]["count"]
    )


def test_redis_errors_breaker_and_write_failures(own_redis, cache_name):
    registry = CollectorRegistry()
    cache = TieredCache.from_url(own_redis.url, name=cache_name, invalidation=None, breaker_threshold=3)
    try:
        cache.register_metrics(registry)
        cache.set("a", 1)
        cache.get("b")  # a miss: get has been called, so its usual errors' series exist, at 0
        name = cache.name
        for reason in ("ConnectionError", "TimeoutError"):
            assert value(registry, "tiercache_l2_errors_total", name, op="get", reason=reason) == 0
        own_redis.kill()
        for key in ("x", "y", "z"):
            assert cache.get(key) is None  # three connection errors open the breaker
        assert cache.get("w") is None  # refused by the breaker
        assert cache.set("v", 1) is False  # refused too: a write failure
        assert value(registry, "tiercache_l2_errors_total", name, op="get", reason="ConnectionError") == 3
        assert value(registry, "tiercache_l2_short_circuits_total", name) == 2
        assert value(registry, "tiercache_write_failures_total", name) == 1
        assert value(registry, "tiercache_breaker_state", name) == 2
        assert value(registry, "tiercache_requests_total", name, tier="l1", result="miss") == 5
        assert value(registry, "tiercache_l2_duration_seconds_count", name, op="get") == 4
        # without invalidation there is no subscriber to report on
        assert value(registry, "tiercache_subscriber_connected", name) is None
        assert value(registry, "tiercache_l1_serving", name) == 1
    finally:
        cache.close()


def test_subscriber_loss_shuts_l1_and_reads_bypass_it(own_redis, cache_name):
    registry = CollectorRegistry()
    cache = TieredCache.from_url(own_redis.url, name=cache_name, heartbeat=0.1, max_silence=0.5)
    try:
        assert cache.wait_ready(10)
        cache.register_metrics(registry)
        name = cache.name
        assert value(registry, "tiercache_subscriber_connected", name) == 1
        own_redis.kill()
        assert wait_until(lambda: value(registry, "tiercache_subscriber_connected", name) == 0)
        assert value(registry, "tiercache_l1_serving", name) == 0
        assert value(registry, "tiercache_l1_flushes_total", name, reason="disconnect") == 1
        before = value(registry, "tiercache_l1_bypassed_total", name)
        cache.get("k")
        assert value(registry, "tiercache_l1_bypassed_total", name) == before + 1
        assert cache.get_many(["x", "y"]) == {}  # Redis is down too: nothing, and two more bypasses
        assert value(registry, "tiercache_l1_bypassed_total", name) == before + 3
        own_redis.start()
        assert cache.wait_ready(10)
        assert value(registry, "tiercache_subscriber_connected", name) == 1
        assert value(registry, "tiercache_subscriber_reconnects_total", name) >= 1
    finally:
        cache.close()


def test_counters_add_up_under_threads(make_cache, raw_redis):
    """No lock guards the counters: C fields on the L1 path, plain `+=` on the Redis path.
    Eight threads reading at once must still lose no count."""
    import threading

    def round_trips() -> int:
        stats = raw_redis.info("commandstats")
        return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("get", "mget"))

    cache = make_cache(l1_maxsize=100)
    cache.set_many({f"hot{i}": i for i in range(10)})
    registry = CollectorRegistry()
    cache.register_metrics(registry)
    threads, per_thread = 8, 300
    start = threading.Barrier(threads)

    def reader(index):
        start.wait()
        for n in range(per_thread):
            # hot keys hit L1; cold ones go to Redis (and miss there)
            cache.get(f"hot{n % 10}" if n % 3 else f"cold{index}:{n}")

    workers = [threading.Thread(target=reader, args=(index,)) for index in range(threads)]
    before = round_trips()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sent = round_trips() - before
    name = cache.name
    l1_hits = value(registry, "tiercache_requests_total", name, tier="l1", result="hit")
    l1_misses = value(registry, "tiercache_requests_total", name, tier="l1", result="miss")
    cold = threads * len(range(0, per_thread, 3))
    assert l1_hits + l1_misses == threads * per_thread
    assert l1_misses == cold
    assert value(registry, "tiercache_requests_total", name, tier="l2", result="miss") == cold
    # One observation a round trip: concurrent reads share them (cache.ReadTrips).
    assert value(registry, "tiercache_l2_duration_seconds_count", name, op="get") == sent <= cold


def test_label_values_never_hold_keys(make_cache):
    registry = CollectorRegistry()
    cache = make_cache()
    cache.register_metrics(registry)
    secret = "user:8c1f-secret-key"
    cache.set(secret, 1)
    cache.get(secret)
    cache.get(secret + "-absent")
    cache.get_or_load(secret + "-loaded", lambda key: 1)
    allowed = {"cache", "tier", "result", "op", "cause", "reason", "le"}
    for family in registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= allowed
            assert not any("secret" in label for label in sample.labels.values())


# -- registration ---------------------------------------------------------------------------


def test_two_caches_with_different_names_share_one_family_per_metric(make_cache, cache_name):
    registry = CollectorRegistry()
    first = make_cache(name=cache_name + "-a")
    second = make_cache(name=cache_name + "-b")
    CacheCollector(first, registry=registry)
    second.register_metrics(registry)
    first.get("x")
    second.set("y", 1)
    second.get("y")
    second.get("y")
    assert value(registry, "tiercache_requests_total", first.name, tier="l1", result="miss") == 1
    assert value(registry, "tiercache_requests_total", first.name, tier="l1", result="hit") == 0
    assert value(registry, "tiercache_requests_total", second.name, tier="l1", result="hit") == 2
    text = generate_latest(registry).decode()
    assert text.count("# TYPE tiercache_requests_total counter") == 1
    parsed = {family.name: family for family in text_string_to_metric_families(text)}
    caches = {sample.labels["cache"] for sample in parsed["tiercache_requests"].samples}
    assert caches == {first.name, second.name}


def test_registering_a_name_twice_is_an_error(make_cache, cache_name):
    registry = CollectorRegistry()
    first = make_cache()
    first.register_metrics(registry)
    with pytest.raises(ValueError, match=f"cache named '{cache_name}' is already registered"):
        first.register_metrics(registry)
    namesake = make_cache()  # another cache with the same name
    with pytest.raises(ValueError, match="already registered"):
        CacheCollector(namesake, registry=registry)
    assert value(registry, "tiercache_l1_capacity", cache_name) == 10_000  # the first still exports
    # another registry is another namespace of names
    assert CacheCollector(namesake, registry=CollectorRegistry()) is not None
    first.close()  # closing unregisters: the name is free again, and the family is gone
    assert value(registry, "tiercache_l1_capacity", cache_name) is None
    namesake.register_metrics(registry)
    assert value(registry, "tiercache_l1_capacity", cache_name) == 10_000


def test_a_collector_without_registry_is_registered_by_hand(make_cache):
    cache = make_cache()
    collector = CacheCollector(cache, registry=None)
    registry = CollectorRegistry()
    registry.register(collector)
    cache.get("x")
    assert value(registry, "tiercache_requests_total", cache.name, tier="l1", result="miss") == 1
    with pytest.raises(TypeError, match="TieredCache or AsyncTieredCache"):
        CacheCollector(LocalCache(10), registry=None)


@pytest.fixture
def multiprocess_dir(tmp_path, monkeypatch):
    """prometheus_client in multiprocess mode for this test alone (it decides at import,
    so the value class is swapped the way the environment variable would have chosen it)."""
    from prometheus_client import values

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    yield tmp_path
    if hasattr(values, "close_all_multiprocess_files"):
        values.close_all_multiprocess_files()


def test_the_prometheus_client_internals_we_use(multiprocess_dir):
    """metrics.py's two uses of prometheus_client internals (the release range is pinned in
    pyproject.toml): the mode marker on values.ValueClass, and a value made from it that
    writes an absolute figure to this process's file, which MultiProcessCollector reads."""
    from prometheus_client import values

    from tiercache.metrics import SPECS, _file_value, multiprocess_mode

    assert multiprocess_mode()
    assert values.ValueClass._multiprocess is True
    spec = next(spec for spec in SPECS if spec.kind == "counter")
    value = _file_value(spec, spec.name + "_total", ["cache", *spec.labels], ["x", *("v" for _ in spec.labels)])
    value.set(41.0)
    value.set(42.0)
    labels = dict(zip(["cache", *spec.labels], ["x", *("v" for _ in spec.labels)], strict=True))
    assert _from_files(multiprocess_dir, spec.name + "_total", **labels) == 42.0


def test_multiprocess_mode_is_off_by_default():
    from tiercache.metrics import multiprocess_mode

    assert not multiprocess_mode()


def _from_files(path, name, **labels):
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return registry.get_sample_value(name, labels)


def test_mirror_copies_figures_on_its_interval_and_at_close(make_cache, multiprocess_dir):
    cache = make_cache()
    mirror = cache.register_metrics(interval=0.02)
    assert isinstance(mirror, MultiprocessMirror)
    with pytest.raises(ValueError, match="already mirrored"):
        cache.register_metrics()
    for expected in (1, 2):
        cache.get("absent")
        assert wait_until(
            lambda: (
                _from_files(multiprocess_dir, "tiercache_requests_total", cache=cache.name, tier="l1", result="miss")
                == expected
            )
        )
    assert _from_files(multiprocess_dir, "tiercache_l2_duration_seconds_count", cache=cache.name, op="get") == 2
    cache.close()
    # The name is free again once closed. A new cache of that name starts from zero, and a
    # mirror that never ticks still writes at close().
    again = make_cache()
    again.register_metrics(interval=3600)
    assert _from_files(multiprocess_dir, "tiercache_requests_total", cache=cache.name, tier="l1", result="miss") == 0
    for _ in range(3):
        again.get("absent")
    assert _from_files(multiprocess_dir, "tiercache_requests_total", cache=cache.name, tier="l1", result="miss") == 0
    again.close()
    assert _from_files(multiprocess_dir, "tiercache_requests_total", cache=cache.name, tier="l1", result="miss") == 3


def test_mirror_checks_its_interval_and_directory(make_cache, multiprocess_dir, monkeypatch):
    cache = make_cache()
    for interval in (0, -1, "1", True, float("nan")):
        with pytest.raises(ValueError, match="interval must be a positive number"):
            MultiprocessMirror(cache, interval=interval)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiprocess_dir / "absent"))
    with pytest.raises(OSError):
        MultiprocessMirror(cache)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiprocess_dir))
    mirror = MultiprocessMirror(cache)  # the failed one left no claim on the name
    mirror.stop()
    assert mirror._stopping.is_set() and not mirror._thread.is_alive()


def test_mirror_refuses_without_multiprocess_mode(make_cache):
    cache = make_cache()
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        MultiprocessMirror(cache)


def test_start_http_server_checks_its_port():
    for port in (-1, 65536, "9100", 1.5, True):
        with pytest.raises(ValueError, match="port must be an int"):
            start_http_server(port)


# -- the real endpoint ----------------------------------------------------------------------


def test_the_http_endpoint_serves_parsable_metrics(make_cache):
    registry = CollectorRegistry()
    cache = make_cache()
    cache.register_metrics(registry)
    cache.set("a", 1)
    cache.get("a")
    cache.get("b")
    server, thread = start_http_server(0, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("cache") == cache.name:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    name = cache.name
    assert found[("tiercache_requests_total", (("cache", name), ("result", "hit"), ("tier", "l1")))] == 1
    assert found[("tiercache_requests_total", (("cache", name), ("result", "miss"), ("tier", "l2")))] == 1
    assert found[("tiercache_l2_duration_seconds_count", (("cache", name), ("op", "get")))] == 1
    assert found[("tiercache_l1_entries", (("cache", name),))] == 1


# -- multiprocess mode, gunicorn-style --------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from tiercache import TieredCache
    from tiercache.metrics import MultiprocessMirror, start_http_server

    url, name, hits, serve = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "serve"
    cache = TieredCache.from_url(url, name=name, l1_maxsize=100)
    assert cache.wait_ready(10)
    mirror = cache.register_metrics(interval=0.05)
    assert isinstance(mirror, MultiprocessMirror), type(mirror)
    try:
        cache.register_metrics()
    except ValueError as exc:
        print("twice:", exc, flush=True)
    key = f"k{hits}"  # each worker its own key: the other's write would invalidate a shared one
    cache.set(key, 1)
    for _ in range(hits):
        assert cache.get(key) == 1
    cache.get("absent")
    mirror.sync()
    port = start_http_server(0)[0].server_port if serve else 0
    print("ready", port, flush=True)
    sys.stdin.readline()
    cache.close()
    """
)


def test_multiprocess_mode_sums_two_workers_in_one_scrape(redis_server, cache_name, tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_server.url, cache_name, str(hits), role],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for hits, role in ((3, "serve"), (5, "quiet"))
    ]
    try:
        lines = [[], []]
        for index, worker in enumerate(workers):
            while True:
                line = worker.stdout.readline()
                assert line, f"worker {index} exited early"
                lines[index].append(line)
                if line.startswith("ready"):
                    break
        assert all(any(line.startswith("twice:") and "already mirrored" in line for line in out) for out in lines)
        port = int(lines[0][-1].split()[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.stdin.write("\n")
                worker.stdin.flush()
        for worker in workers:
            worker.wait(15)
            worker.stdin.close()
            worker.stdout.close()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("cache") == cache_name:
                labels = {k: v for k, v in sample.labels.items() if k != "cache"}
                found[(sample.name, frozenset(labels.items()))] = sample.value
    hit = frozenset({"tier": "l1", "result": "hit"}.items())
    miss = frozenset({"tier": "l1", "result": "miss"}.items())
    assert found[("tiercache_requests_total", hit)] == 3 + 5
    assert found[("tiercache_requests_total", miss)] == 1 + 1
    assert found[("tiercache_invalidations_sent_total", frozenset())] == 2
    assert found[("tiercache_l1_capacity", frozenset())] == 200  # livesum over the two workers
    assert found[("tiercache_subscriber_connected", frozenset())] == 1  # livemin
    assert found[("tiercache_l2_duration_seconds_count", frozenset({"op": "get"}.items()))] == 2
    assert found[("tiercache_l2_duration_seconds_count", frozenset({"op": "set"}.items()))] == 2

    # The workers' final figures stay in the files after they exit: counters keep counting them.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert (
        registry.get_sample_value("tiercache_requests_total", {"cache": cache_name, "tier": "l1", "result": "hit"}) == 8
    )


# -- the lag stamp on invalidation messages -------------------------------------------------


def _subscriber_state(wall):
    stats = TierStats()
    l1 = LocalCache(100)
    guard = FillGuard(l1, L1Gate())
    keys = KeyCodec("tc", "lag")
    state = SubscriberState(guard, keys, b"me" * 8, BusSettings(), stats, wall_clock=wall)
    return state, stats, keys


def test_invalidation_lag_is_measured_from_the_stamp():
    wall = FakeTimer(start=1_700_000_000.0)
    state, stats, keys = _subscriber_state(wall)
    publisher = Publisher(b"chan", wall_clock=wall)
    message = publisher.keys_message([keys.redis_key("a")])
    wall.advance(0.003)
    state.apply(message, now=1.0)
    counts, total = stats.invalidation_lag.snapshot()
    assert total == pytest.approx(0.003, abs=1e-6)  # unix seconds as a double: ~0.2 us apart
    assert sum(counts) == 1 and counts[stats.invalidation_lag.upper_bounds.index(0.005)] == 1
    # another host's clock ahead of ours: the lag is counted as 0, not negative
    message = publisher.keys_message([keys.redis_key("b")])
    wall.advance(-1.0)
    state.apply(message, now=1.0)
    counts, total = stats.invalidation_lag.snapshot()
    assert counts[0] == 1 and total == pytest.approx(0.003, abs=1e-6)
    # a message without the stamp (five fields) is applied, with no lag observed
    state.apply(msgpack.packb([VERSION, b"x" * 16, 1, KEYS, [keys.redis_key("c")]]), now=1.0)
    assert stats.invalidations_received == 3
    assert sum(stats.invalidation_lag.snapshot()[0]) == 2


def test_flush_reasons_are_counted():
    wall = FakeTimer()
    state, stats, keys = _subscriber_state(wall)
    publisher = Publisher(b"chan", wall_clock=wall)
    state.confirmed(now=0.0)
    state.apply(publisher.flush_message(()), now=0.0)
    state.apply_tracking(None)  # Redis says: everything changed
    state.message_lost()
    state.lost("silence")
    state.lost("disconnect")  # already down: not a second flush
    assert stats.flushes == {"disconnect": 0, "silence": 1, "message_lost": 1, "clear": 2, "overflow": 0}


def test_scrape_reads_figures_at_scrape_time(make_cache):
    registry = CollectorRegistry()
    cache = make_cache()
    cache.register_metrics(registry)
    for expected in range(1, 4):
        cache.get("absent")
        assert value(registry, "tiercache_requests_total", cache.name, tier="l1", result="miss") == expected


EXIT_WORKER = """
import sys
from tiercache import TieredCache
url, name = sys.argv[1:3]
cache = TieredCache.from_url(url, name=name)
assert cache.wait_ready(10)
cache.register_metrics(interval=60)  # never syncs on its own during this run
cache.set("k", 1)
for _ in range(500):
    cache.get("k")
# exits without close(), as a recycled gunicorn worker does
"""


def test_a_worker_exiting_without_close_still_writes_its_counts(redis_server, cache_name, tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", EXIT_WORKER, redis_server.url, cache_name], env=env, check=True, timeout=60)
    hits = _from_files(tmp_path, "tiercache_requests_total", cache=cache_name, tier="l1", result="hit")
    assert hits == 500
