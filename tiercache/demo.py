"""The fleet demo: ``python -m tiercache demo`` (what ``make demo`` runs).

A small fleet of worker processes behaves like a stateless service in front of a slow source
of truth: each reads zipf-distributed keys through ``get_or_load`` (L1, then Redis, then the
source) and writes a few percent of its requests through write-through (the source, then
Redis, then an invalidation every other worker hears). Meanwhile the parent serves the
fleet's Prometheus metrics on 127.0.0.1, shows live progress computed from that same scrape,
and at the end prints a summary and the consistency checker's verdict on every read.

Where the demo runs:
  * the Redis given with --redis (its keys under a cache name of its own, deleted at the
    end), else an embedded Redis in a temporary directory, stopped and removed at the end;
  * the source of truth: a SQLite file in a temporary directory, each query delayed by
    --source-latency to stand for a database across a network;
  * the workers' metrics: prometheus_client's multiprocess files, in the same directory.

Each key has one writing worker (the consistency check needs one history per key); every
worker reads every key. Ctrl-C (or SIGTERM) stops the run early and still prints the
summary; nothing is left running.
"""

from __future__ import annotations

import argparse
import array
import bisect
import contextlib
import itertools
import math
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

import redis

from . import EXTENSION, clients, embedded, verify
from .cache import TieredCache

#: Request latency buckets of the demo's own histogram (seconds): 1.26x apart from 1 us to
#: 25 s, so a p50 or p99 interpolated within one is at most a quarter off, usually far less.
BUCKETS = tuple(round(10 ** (exponent / 10), 9) for exponent in range(-60, 15))
TIERS = ("l1", "l2", "source")
TIER_NAMES = {"l1": "L1 (this process)", "l2": "L2 (Redis)", "source": "source (SQLite)"}
ZIPF_ALPHA = 1.0
START_TIMEOUT = 60.0  # for every worker to be up and subscribed
REPORT_TIMEOUT = 120.0  # for every worker's records, once told to stop
READS_KEPT = 8_000_000  # reads kept for the check, shared by the workers (24 bytes each)


class Settings(NamedTuple):
    """What every worker of a run is told (picklable, for spawned processes)."""

    url: str
    name: str
    workers: int
    keys: int
    write_ratio: float
    source: str  # the SQLite file
    source_latency: float
    l1_ttl: float
    l1_maxsize: int
    default_ttl: float
    max_reads: int  # a worker's reads kept for the check (Records)


# -- the source of truth -----------------------------------------------------------------


class Source:
    """The slow source of truth: a SQLite table of items, each query delayed by latency.

    ``load`` is the loader of get_or_load and ``write`` the cache's writer (write-through);
    ``calls`` counts the loads, so a worker knows which reads reached the source."""

    def __init__(self, path: str, latency: float) -> None:
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._latency = latency
        self.calls = 0

    @staticmethod
    def create(path: str, keys: int) -> None:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writers
            db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, version INTEGER)")
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO items VALUES (?, ?, ?, 1)",
                ((i, f"item {i}", round(1 + i % 997 / 10, 2)) for i in range(keys)),
            )
            db.execute("COMMIT")

    def load(self, key: str) -> dict[str, Any] | None:
        self.calls += 1
        time.sleep(self._latency)
        row = self._db.execute("SELECT name, price, version FROM items WHERE id = ?", (item_id(key),)).fetchone()
        return None if row is None else {"name": row[0], "price": row[1], "v": row[2]}

    def write(self, key: str, value: dict[str, Any]) -> None:
        time.sleep(self._latency)
        self._db.execute(
            "UPDATE items SET price = ?, version = ? WHERE id = ?", (value["price"], value["v"], item_id(key))
        )

    def close(self) -> None:
        self._db.close()


def item_key(number: int) -> str:
    return f"item:{number}"


def item_id(key: str) -> int:
    return int(key[5:])


class Zipf:
    """Draws from numbers (a range, most popular first) with probability proportional to
    1/rank^alpha. The cumulative weights are an array of doubles: 8 bytes a number."""

    def __init__(self, numbers: range, alpha: float, rnd: random.Random) -> None:
        self._numbers = numbers
        self._cumulative = array.array(
            "d", itertools.accumulate(1 / (rank + 1) ** alpha for rank in range(len(numbers)))
        )
        self._random = rnd.random

    def draw(self) -> int:
        return self._numbers[bisect.bisect_left(self._cumulative, self._random() * self._cumulative[-1])]


# -- a worker ------------------------------------------------------------------------------


class Records:
    """What a worker did, compact: every write (key number, version, time done) and the
    reads (key number, version seen, time begun; version 0 is a miss). Past max_reads
    kept reads, every other one is let go and from then on one read in twice as many is
    kept, so a long run is checked on an even sample in bounded memory."""

    def __init__(self, max_reads: int) -> None:
        self.max_reads = max_reads
        self.read_keys = array.array("q")
        self.read_versions = array.array("q")
        self.read_times = array.array("d")
        self.writes: list[tuple[int, int, float]] = []
        self.reads_seen = 0
        self.stride = 1  # one read in stride is kept

    def read(self, number: int, version: int, began: float) -> None:
        seen, self.reads_seen = self.reads_seen, self.reads_seen + 1
        if seen % self.stride:  # kept: reads 0, stride, 2 * stride, ...
            return
        if len(self.read_keys) >= self.max_reads:
            self.read_keys, self.read_versions, self.read_times = (
                self.read_keys[::2],
                self.read_versions[::2],
                self.read_times[::2],
            )
            self.stride *= 2
        self.read_keys.append(number)
        self.read_versions.append(version)
        self.read_times.append(began)

    def reads(self) -> Iterator[tuple[int, int, float]]:
        return zip(self.read_keys, self.read_versions, self.read_times, strict=True)


def worker(settings: Settings, index: int, start: Any, stop: Any, results: Any) -> None:
    """A worker process: serve requests from start until stop is set, then send the records."""
    parent = os.getppid()
    try:
        records, stats = _serve(settings, index, start, stop, results)
    except BaseException:
        results.put(("failed", index, traceback.format_exc()))
        return
    if os.getppid() != parent:  # the parent was killed: nobody reads the records, and sending
        results.cancel_join_thread()  # them would block on the full pipe forever
        return
    results.put(("done", index, (records, stats)))


def _serve(settings: Settings, index: int, start: Any, stop: Any, results: Any) -> tuple[Records, dict[str, Any]]:
    from prometheus_client import Histogram  # in multiprocess mode: the parent set its directory

    latency = Histogram(
        "tiercache_demo_request_seconds",
        "Latency of the demo's requests, by op and by the tier that answered a read.",
        ["op", "tier"],
        buckets=BUCKETS,
    )
    read_latency = {tier: latency.labels("read", tier).observe for tier in TIERS}
    write_latency = latency.labels("write", "source").observe
    rnd = random.Random(index)
    reads = Zipf(range(settings.keys), ZIPF_ALPHA, rnd)
    own = range(index, settings.keys, settings.workers)  # the keys this worker writes
    writes = Zipf(own, ZIPF_ALPHA, rnd) if own else None
    versions = dict.fromkeys(own, 1)  # the source starts every item at version 1
    records = Records(settings.max_reads)
    source = Source(settings.source, settings.source_latency)
    clock = time.monotonic
    try:
        with TieredCache.from_url(
            settings.url,
            name=settings.name,
            l1_ttl=settings.l1_ttl,
            l1_maxsize=settings.l1_maxsize,
            default_ttl=settings.default_ttl,
            writer=source.write,
        ) as cache:
            cache.register_metrics(interval=0.5)
            if not cache.wait_ready(START_TIMEOUT):
                raise RuntimeError(f"worker {index}: the cache's subscriber did not connect to {settings.url}")
            results.put(("ready", index, os.getpid()))
            start.wait()
            l1 = cache.l1
            next_look = 0.0
            parent = os.getppid()
            while True:
                now = clock()
                if now >= next_look:  # a look at the event costs a system call: 20 times a second
                    if stop.is_set() or os.getppid() != parent:  # told to, or the parent was killed
                        break
                    next_look = now + 0.05
                if writes is not None and rnd.random() < settings.write_ratio:
                    number = writes.draw()
                    versions[number] += 1
                    value = {"name": f"item {number}", "price": round(rnd.uniform(1, 100), 2), "v": versions[number]}
                    began = clock()
                    cache.set(item_key(number), value)  # the source took it (the writer raises if not)
                    done = clock()
                    write_latency(done - began)
                    records.writes.append((number, versions[number], done))
                    continue
                number = reads.draw()
                key = item_key(number)
                loads, in_l1 = source.calls, key in l1
                began = clock()
                found = cache.get_or_load(key, source.load)
                read_latency["source" if source.calls != loads else "l1" if in_l1 else "l2"](clock() - began)
                records.read(number, found["v"] if found else 0, began)
            stats = cache.stats()
    finally:
        source.close()
    return records, stats


# -- the parent: figures from the scrape --------------------------------------------------


class Figures:
    """One scrape of the fleet, as the sums the progress and summary need."""

    def __init__(self, registry: Any) -> None:
        self.taken = time.monotonic()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.buckets: dict[tuple[str, str], list[float]] = {}  # (op, tier): cumulative counts by BUCKETS
        for family in registry.collect():
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("cache", "le")))
                if sample.name == "tiercache_demo_request_seconds_bucket":
                    slot = (sample.labels["op"], sample.labels["tier"])
                    counts = self.buckets.setdefault(slot, [0.0] * (len(BUCKETS) + 1))
                    le = float(sample.labels["le"])  # a bound, as text: found within rounding
                    counts[bisect.bisect_left(BUCKETS, le * (1 - 1e-9))] += sample.value
                else:
                    key = (sample.name, labels)
                    self.counters[key] = self.counters.get(key, 0.0) + sample.value

    def counter(self, name: str, **labels: str) -> float:
        """The sum over every series of name whose labels include labels."""
        wanted = set(labels.items())
        return sum(value for (each, have), value in self.counters.items() if each == name and wanted <= set(have))

    def requests(self, op: str, tier: str) -> float:
        counts = self.buckets.get((op, tier))
        return counts[-1] if counts else 0.0

    def since(self, earlier: Figures | None) -> Figures:
        """The figures of what happened after earlier (self when earlier is None)."""
        if earlier is None:
            return self
        delta = Figures.__new__(Figures)
        delta.taken = self.taken
        delta.counters = {key: value - earlier.counters.get(key, 0.0) for key, value in self.counters.items()}
        delta.buckets = {
            slot: [
                now - before for now, before in zip(counts, earlier.buckets.get(slot, [0.0] * len(counts)), strict=True)
            ]
            for slot, counts in self.buckets.items()
        }
        return delta

    def quantile(self, q: float, op: str, tier: str) -> float | None:
        return quantile(q, self.buckets.get((op, tier), []))


def quantile(q: float, cumulative: list[float]) -> float | None:
    """The q-quantile of a histogram given as cumulative counts by BUCKETS (+Inf last),
    interpolated within its bucket as Prometheus's histogram_quantile does; None if empty."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    index = bisect.bisect_left(cumulative, rank)
    if index >= len(BUCKETS):  # in the +Inf bucket: the highest finite bound is all we know
        return BUCKETS[-1]
    lower = BUCKETS[index - 1] if index else 0.0
    below = cumulative[index - 1] if index else 0.0
    inside = cumulative[index] - below
    return lower + (BUCKETS[index] - lower) * ((rank - below) / inside if inside else 1.0)


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def share_text(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def tier_lines(figures: Figures) -> list[str]:
    """Reads by the tier that answered, and writes: count, share, p50, p99."""
    reads = sum(figures.requests("read", tier) for tier in TIERS)
    rows = [(f"read from {TIER_NAMES[tier]}", "read", tier) for tier in TIERS]
    rows.append(("write (source, Redis, bus)", "write", "source"))
    lines = [f"  {'':28s}{'requests':>10s}{'share':>8s}{'p50':>11s}{'p99':>11s}"]
    for label, op, tier in rows:
        count = figures.requests(op, tier)
        lines.append(
            f"  {label:28s}{count:10,.0f}{share_text(count, reads) if op == 'read' else '':>8s}"
            f"{duration_text(figures.quantile(0.5, op, tier)):>11s}"
            f"{duration_text(figures.quantile(0.99, op, tier)):>11s}"
        )
    return lines


def cache_lines(figures: Figures, per: float | None = None) -> list[str]:
    """Hit ratios from the caches' own counters; loads, invalidations, fills dropped and
    flushes, per second when per (seconds) is given."""

    def count(name: str, **labels: str) -> float:
        return figures.counter(name, **labels)

    def amount(name: str) -> str:
        return f"{count(name) / per:,.0f}/s" if per else f"{count(name):,.0f}"

    l1_hits = count("tiercache_requests_total", tier="l1", result="hit")
    l1_reads = l1_hits + count("tiercache_requests_total", tier="l1", result="miss")
    l2_hits = count("tiercache_requests_total", tier="l2", result="hit")
    l2_reads = l2_hits + count("tiercache_requests_total", tier="l2", result="miss")
    return [
        f"  hit ratio: L1 {share_text(l1_hits, l1_reads)}, L2 {share_text(l2_hits, l2_reads)}   "
        f"loader calls {amount('tiercache_loads_total')}   fills dropped {amount('tiercache_l1_fills_dropped_total')}",
        f"  invalidations sent {amount('tiercache_invalidations_sent_total')}, "
        f"received {amount('tiercache_invalidations_received_total')}   "
        f"L1 flushes {amount('tiercache_l1_flushes_total')}",
    ]


class Progress:
    """The live view: one block redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO, duration: float) -> None:
        self._out = out
        self._tty = out.isatty()
        self._duration = duration
        self._drawn = 0  # lines of the block on screen
        self.every = 1.0 if self._tty else 2.0

    def show(self, elapsed: float, window: Figures, seconds: float) -> None:
        """Draw the figures of the last seconds (window)."""
        reads = sum(window.requests("read", tier) for tier in TIERS)
        rate = (reads + window.requests("write", "source")) / seconds
        head = f"  {elapsed:5.1f} s of {self._duration:g} s  {rate:9,.0f} requests/s"
        if not self._tty:
            shares = ", ".join(f"{tier} {share_text(window.requests('read', tier), reads)}" for tier in TIERS)
            print(
                f"{head}   reads from {shares}   "
                f"p99 l1 {duration_text(window.quantile(0.99, 'read', 'l1'))}, "
                f"l2 {duration_text(window.quantile(0.99, 'read', 'l2'))}   "
                f"invalidations {window.counter('tiercache_invalidations_received_total') / seconds:,.0f}/s",
                file=self._out,
                flush=True,
            )
            return
        lines = [
            f"{head} in the last {seconds:.1f} s  (Ctrl-C stops)",
            *tier_lines(window),
            *cache_lines(window, seconds),
        ]
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F")  # back to the block's first line
        self._out.write("".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        self._out.flush()
        self._drawn = len(lines)


# -- the parent: the run --------------------------------------------------------------------

#: What stops the demo: Ctrl-C (SIGINT, which a terminal sends to the whole process group),
#: SIGTERM (kill, systemd) and SIGHUP (the terminal closed). Workers block all three, so
#: only the parent hears them and it stops the fleet in order.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SHUTDOWN_TIMEOUT = 10.0  # for every worker to end once told to (then they are killed)


@contextlib.contextmanager
def redis_for_demo(url: str | None, out: TextIO | None = None) -> Iterator[str]:
    """The Redis to use: url if given, else an embedded Redis in a temporary directory,
    stopped and removed at the end (the demo leaves nothing behind, and never writes into a
    Redis it was not given)."""
    if url:
        yield url
        return
    directory = tempfile.mkdtemp(prefix="tiercache-demo-")
    try:
        embedded_url = f"embedded://{urllib.parse.quote(directory)}"
        clients.embedded_url(embedded_url)  # started now, so the message comes first
        print(
            f"no --redis given: started an embedded Redis in {directory} (removed at the end)",
            file=out or sys.stdout,
        )
        yield embedded_url
    finally:
        with _uninterruptible():
            embedded.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)


class _Stops:
    """The stop signals, counted. Each raises KeyboardInterrupt in the main thread, as Ctrl-C
    does, except during a read of the workers' queue: there it is only counted and raised
    once the read is over. An exception raised inside a read can leave half a message in
    the pipe, and every later read, the clean-up's included, then waits for the rest forever
    (a second Ctrl-C while the records came in hung the demo)."""

    def __init__(self) -> None:
        self.count = 0
        self.depth = 0  # reads in progress

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if not self.depth:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        before = self.count
        self.depth += 1
        try:
            yield
        finally:  # a signal that came during the read is raised now, whatever the read did
            self.depth -= 1
            if self.count != before and not self.depth:
                raise KeyboardInterrupt


_STOPS = _Stops()


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP all stop the run (_Stops) while it lasts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _STOPS) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """The stop signals ignored while cleaning up, so a second Ctrl-C cannot leave a worker,
    a Redis or a directory behind (one that arrives meanwhile is dropped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Interrupted(Exception):
    """The run was stopped before the workers started: nothing to report."""


class Fleet:
    """The worker processes of one run, the events that start and stop them, the queue they
    report on, and the metrics server over their files."""

    def __init__(self, settings: Settings, workdir: str, metrics_port: int) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        self.settings = settings
        self.metrics_dir = os.path.join(workdir, "metrics")
        os.mkdir(self.metrics_dir)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        try:
            self.server, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=self.registry)
        except OSError as exc:
            raise SystemExit(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {exc.strerror}") from None
        self._ctx = multiprocessing.get_context("spawn")
        self.start, self.stop, self.results = self._ctx.Event(), self._ctx.Event(), self._ctx.Queue()
        self.processes: list[Any] = []
        self.reports: dict[int, tuple[Records, dict[str, Any]]] = {}

    def launch(self) -> None:
        """Start the workers (they wait for self.start)."""
        settings, ctx = self.settings, self._ctx
        environment = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # the workers' metrics files
        signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))  # inherited by the workers
        try:
            for index in range(settings.workers):
                process = ctx.Process(
                    target=worker, args=(settings, index, self.start, self.stop, self.results), daemon=True
                )
                process.start()
                self.processes.append(process)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
            if environment is None:
                del os.environ["PROMETHEUS_MULTIPROC_DIR"]
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = environment

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def _trouble(self) -> str | None:
        """Why a worker that has not reported cannot (it died or was stopped), if one cannot."""
        for index, process in enumerate(self.processes):
            if index in self.reports:
                continue
            if process.exitcode is not None:
                how = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
                return f"worker {index} (pid {process.pid}) died ({how})"
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{process.pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                    return f"worker {index} (pid {process.pid}) is stopped (SIGSTOP)"
        return None

    def _receive(self, timeout: float) -> tuple[str, int, Any] | None:
        """The next message, or None after timeout; SystemExit if a worker failed or died."""
        try:
            with _STOPS.deferred():  # never interrupted half-way through a message
                kind, index, detail = self.results.get(timeout=timeout)
        except queue.Empty:
            trouble = self._trouble()
            if trouble:
                raise SystemExit(f"{trouble}: stopping the run") from None
            return None
        if kind == "failed":
            raise SystemExit(f"worker {index} failed:\n{detail}")
        if kind == "done":
            self.reports[index] = detail
        return kind, index, detail

    def wait_ready(self) -> list[int]:
        """Until every worker's cache is up and subscribed; their pids."""
        pids: list[int] = []
        deadline = time.monotonic() + START_TIMEOUT
        while len(pids) < len(self.processes):
            if time.monotonic() > deadline:
                raise SystemExit(f"the workers did not start within {START_TIMEOUT:g} s")
            message = self._receive(0.2)
            if message is not None and message[0] == "ready":
                pids.append(message[2])
        return sorted(pids)

    def check(self) -> None:
        """SystemExit if a worker failed, died or was stopped while serving."""
        while self._receive(0.0) is not None:
            pass

    def collect(self) -> list[tuple[Records, dict[str, Any]]]:
        """Every worker's records, once told to stop."""
        deadline = time.monotonic() + REPORT_TIMEOUT
        while len(self.reports) < len(self.processes):
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(self.processes) - len(self.reports)} worker(s) sent no records")
            self._receive(0.2)
        return [self.reports[index] for index in range(len(self.processes))]

    def shutdown(self) -> None:
        """Stop every worker (killing those that do not end in time) while reading whatever
        they still send, then the metrics server."""
        from prometheus_client.multiprocess import mark_process_dead

        self.stop.set()
        self.start.set()  # a worker still starting goes straight to its end
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT
        while any(process.is_alive() for process in self.processes) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty, SystemExit):
                self._receive(0.1)  # a worker cannot end while its records fill the pipe
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(5)
            if process.pid is not None:
                mark_process_dead(process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self.results.close()
        self.results.cancel_join_thread()
        self.server.shutdown()
        self.server.server_close()


def run(
    redis_url: str | None = None,
    workers: int = 4,
    duration: float = 30.0,
    keys: int = 10_000,
    write_ratio: float = 0.02,
    metrics_port: int = 0,
    source_latency: float = 0.002,
    l1_ttl: float = 5.0,
    out: TextIO | None = None,
) -> int:
    """Run the fleet (see the module docstring): 0 when the checker found no read stale past
    the L1 TTL, 1 when it did; Interrupted if stopped before the workers started."""
    out = out or sys.stdout
    with _stop_signals():
        workdir = tempfile.mkdtemp(prefix="tiercache-demo-fleet-")
        try:
            with redis_for_demo(redis_url, out) as url:
                _check_redis(url)
                settings = Settings(
                    url=url,
                    name="demo" if redis_url is None else f"demo-{secrets.token_hex(4)}",
                    workers=workers,
                    keys=keys,
                    write_ratio=write_ratio,
                    source=os.path.join(workdir, "source.sqlite"),
                    source_latency=source_latency,
                    l1_ttl=l1_ttl,
                    l1_maxsize=max(keys // 10, 10),
                    default_ttl=600.0,
                    max_reads=max(100_000, READS_KEPT // workers),
                )
                Source.create(settings.source, keys)
                fleet = None
                try:
                    fleet = Fleet(settings, workdir, metrics_port)
                    fleet.launch()
                    print(_header(settings, duration, fleet.port, workdir), file=out, flush=True)
                    return _conduct(fleet, duration, out)
                finally:
                    with _uninterruptible():
                        if fleet is not None:
                            fleet.shutdown()
                        if redis_url is not None:
                            _delete_keys(settings)
        finally:
            with _uninterruptible():
                shutil.rmtree(workdir, ignore_errors=True)


def _header(settings: Settings, duration: float, port: int, workdir: str) -> str:
    workers = f"{settings.workers} worker process{'es' if settings.workers != 1 else ''}"
    return "\n".join(
        [
            f"tiercache demo: {workers} for {duration:g} s "
            f"(L1 {'compiled' if EXTENSION else 'pure Python'}; L2 on {settings.url})",
            f"  each reads {settings.keys:,} items (zipf, alpha {ZIPF_ALPHA}) through get_or_load: its L1,",
            f"  then Redis, then a SQLite source of truth that takes {settings.source_latency * 1e3:g} ms a query;",
            f"  {settings.write_ratio:.0%} of requests write through: the source, then Redis, then an",
            "  invalidation that every other worker hears",
            f"  L1: {settings.l1_maxsize:,} entries, ttl {settings.l1_ttl:g} s (the bound on staleness); "
            f"Redis ttl {settings.default_ttl:g} s",
            f"  source of truth and metrics files in {workdir} (removed at the end)",
            f"  Prometheus metrics of the whole fleet: http://127.0.0.1:{port}/metrics",
        ]
    )


def _conduct(fleet: Fleet, duration: float, out: TextIO) -> int:
    """Start the workers together, show progress until the time is up or a stop signal,
    collect their records and print the summary and the verdict."""
    try:
        pids = fleet.wait_ready()
    except KeyboardInterrupt:
        raise Interrupted from None
    print(f"  workers up (pids {', '.join(map(str, pids))}): go", file=out, flush=True)
    fleet.start.set()
    began = time.monotonic()
    interrupted = False
    try:
        progress = Progress(out, duration)
        last = Figures(fleet.registry)
        while (elapsed := time.monotonic() - began) < duration:
            time.sleep(min(progress.every, duration - elapsed))
            fleet.check()
            now = Figures(fleet.registry)
            if now.taken - last.taken >= progress.every / 2:
                progress.show(now.taken - began, now.since(last), now.taken - last.taken)
                last = now
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the workers (each finishes the request in hand)", file=out, flush=True)
    fleet.stop.set()
    elapsed = time.monotonic() - began
    reports = fleet.collect()  # each worker closed its cache first: its figures are final
    return _summary(fleet.settings, elapsed, Figures(fleet.registry), reports, out, interrupted)


def _all_writes(reports: list[tuple[Records, dict[str, Any]]]) -> Iterator[tuple[int, int, float]]:
    return itertools.chain.from_iterable(records.writes for records, _ in reports)


def _all_reads(reports: list[tuple[Records, dict[str, Any]]]) -> Iterator[tuple[int, int, float]]:
    return itertools.chain.from_iterable(records.reads() for records, _ in reports)


def _summary(
    settings: Settings,
    elapsed: float,
    figures: Figures,
    reports: list[tuple[Records, dict[str, Any]]],
    out: TextIO,
    interrupted: bool,
) -> int:
    """Print the run's figures and the checker's verdict; the exit status (1: stale reads)."""
    reads = sum(records.reads_seen for records, _ in reports)
    checked = sum(len(records.read_keys) for records, _ in reports)
    writes = sum(len(records.writes) for records, _ in reports)
    loads = figures.counter("tiercache_loads_total")
    errors = figures.counter("tiercache_l2_errors_total")
    failed_writes = figures.counter("tiercache_write_failures_total")
    workers = f"{settings.workers} worker{'s' if settings.workers != 1 else ''}"
    lines = [
        "",
        f"summary: {workers}, {elapsed:.1f} s{' (interrupted)' if interrupted else ''}, "
        f"{(reads + writes) / elapsed if elapsed else 0:,.0f} requests/s",
        *tier_lines(figures),
        *cache_lines(figures),
        f"  the source of truth answered {loads:,.0f} loads for {reads:,} reads: "
        f"{share_text(reads - loads, reads)} of reads never reached it",
    ]
    if errors or failed_writes:
        lines.append(
            f"  Redis failed {errors:,.0f} calls and refused {failed_writes:,.0f} writes: "
            "reads fell back to the source (see the log above)"
        )
    lines.append(
        f"checking {'every read' if checked == reads else f'an even sample of {checked:,} reads'} "
        f"against every write ({writes:,}) ..."
    )
    print("\n".join(lines), file=out, flush=True)
    if not writes:
        print("verdict: nothing to check: no write was made, so no read could be stale", file=out, flush=True)
        return 0
    report = verify.analyse(_all_writes(reports), _all_reads(reports), settings.l1_ttl)
    within = report["visible_within"]
    stale, past = report["stale_reads"], report["stale_past_bound"]
    if past:
        verdict = f"NOT consistent: {past:,} reads were stale past the L1 TTL ({settings.l1_ttl:g} s)"
    elif elapsed <= settings.l1_ttl:
        verdict = (
            f"no read was stale past the L1 TTL, but the run was not longer than it ({settings.l1_ttl:g} s), "
            "so none could have been: run longer to check the bound"
        )
    else:
        verdict = f"consistent: no read was stale past the L1 TTL ({settings.l1_ttl:g} s), the bound tiercache promises"
    print(
        f"  writes seen by every worker within 10 ms: {within[0.010]:.3%}, 100 ms: {within[0.100]:.3%}, "
        f"the L1 TTL: {within[settings.l1_ttl]:.3%}\n"
        f"  reads that returned an older version although a newer write had returned: {stale:,} "
        f"({stale / checked if checked else 0:.3%}; the invalidation was still on its way)\n"
        f"verdict: {verdict}",
        file=out,
        flush=True,
    )
    return 1 if past else 0


def _check_redis(url: str) -> None:
    """SystemExit naming the problem unless url's Redis answers."""
    try:
        with TieredCache.from_url(url, name="demo-check", invalidation=None) as cache:
            cache.redis.ping()
    except (redis.RedisError, OSError) as exc:
        raise SystemExit(f"cannot reach the Redis at {url}: {exc}") from None


def _delete_keys(settings: Settings) -> None:
    """Remove every key the demo made in a Redis it was given (the workers have stopped)."""
    with TieredCache.from_url(settings.url, name=settings.name, invalidation=None) as cache:
        if not cache.clear():
            print(
                f"could not delete the demo's keys in {settings.url} (those of cache {settings.name!r})",
                file=sys.stderr,
            )


# -- the command line ----------------------------------------------------------------------


def _bounded(kind: type, low: float, high: float) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a{'n integer' if kind is int else ' number'}, got {text!r}"
            ) from None
        if not low <= value <= high or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis", help="Redis URL (default: an embedded Redis in a temporary directory, removed at the end)"
    )
    parser.add_argument("--duration", type=_bounded(float, 0.5, 86_400), default=30.0, help="seconds (30)")
    parser.add_argument("--workers", type=_bounded(int, 1, 64), default=4, help="worker processes (4)")
    parser.add_argument("--keys", type=_bounded(int, 1, 1_000_000), default=10_000, help="items (10,000)")
    parser.add_argument(
        "--write-ratio",
        type=_bounded(float, 0, 1),
        default=0.02,
        help="share of requests that write (0.02)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_bounded(int, 0, 65_535),
        default=0,
        help="Prometheus port (0: a free one)",
    )
    parser.add_argument(
        "--source-latency",
        type=_bounded(float, 0, 10),
        default=0.002,
        help="seconds each query of the source of truth takes (0.002)",
    )
    parser.add_argument("--l1-ttl", type=_bounded(float, 0.01, 3600), default=5.0, help="seconds (5)")


def command(args: argparse.Namespace) -> int:
    """python -m tiercache demo: 0 consistent, 1 stale reads found, 130 stopped before a
    summary (everything is cleaned up either way)."""
    try:
        return run(
            args.redis,
            workers=args.workers,
            duration=args.duration,
            keys=args.keys,
            write_ratio=args.write_ratio,
            metrics_port=args.metrics_port,
            source_latency=args.source_latency,
            l1_ttl=args.l1_ttl,
        )
    except (KeyboardInterrupt, Interrupted):  # before the workers ran, or a second Ctrl-C
        print("interrupted: stopped before a summary (nothing was left running)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into something that stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
