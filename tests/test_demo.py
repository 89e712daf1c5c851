"""python -m tiercache demo: the fleet runs, serves its metrics, checks itself, stops cleanly
on Ctrl-C, and leaves nothing behind (no worker, no Redis, no directory, no key)."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import redis

from tiercache import cli, demo
from tiercache.local import NO_EXTENSIONS

pytestmark = pytest.mark.timeout(180)
# The demo's own process handling (signals, workers): once, on the compiled build.
process_handling = pytest.mark.skipif(NO_EXTENSIONS, reason="process handling: run once, compiled")


class Demo:
    """python -m tiercache demo in its own session (so a signal to its process group is what
    a terminal's Ctrl-C is), its output read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tiercache", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matched {pattern!r}:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 90.0) -> str:
        self.process.wait(timeout)
        self._reader.join(10)
        return "\n".join(self.lines)

    def close(self) -> None:
        """Kill what is left (a failed test's run) and close the pipe."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def start_demo():
    runs: list[Demo] = []

    def start(*args: str) -> Demo:
        runs.append(Demo(*args))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def alive(pid: int) -> bool:
    """pid runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line mentions text (an embedded Redis names its socket)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def assert_nothing_left(out: str) -> None:
    directory = re.search(r"started an embedded Redis in (\S+)", out)
    assert directory, out
    assert not os.path.exists(directory[1])
    assert not processes_naming(directory[1])  # its redis-server is gone too
    pids = re.search(r"workers up \(pids ([\d, ]+)\)", out)
    assert pids, out
    assert not [pid for pid in map(int, pids[1].split(", ")) if alive(pid)]


def test_the_fleet_serves_metrics_checks_itself_and_leaves_nothing(start_demo):
    run = start_demo("--duration", "4", "--workers", "2", "--keys", "500", "--write-ratio", "0.05", "--l1-ttl", "1")
    url = run.wait_for(r"Prometheus metrics of the whole fleet: (http://127\.0\.0\.1:\d+/metrics)")[1]
    run.wait_for(r"^\s+\d+\.\d s of 4 s")  # a progress line: the workers are serving
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    # the workers' figures, summed by prometheus_client's multiprocess collector
    hits = re.search(r'^tiercache_requests_total\{cache="demo",result="hit",tier="l1"\} (\S+)$', page, re.M)
    assert hits and float(hits[1]) > 0, page
    reads = re.search(r'^tiercache_demo_request_seconds_count\{op="read",tier="l1"\} (\S+)$', page, re.M)
    assert reads and float(reads[1]) > 0, page
    out = run.finish()
    assert run.process.returncode == 0, out
    assert "verdict: consistent" in out
    loads = re.search(r"the source of truth answered ([\d,]+) loads for ([\d,]+) reads", out)
    assert loads and 0 < int(loads[1].replace(",", "")) < int(loads[2].replace(",", "")), out
    sent = re.search(r"invalidations sent ([\d,]+), received ([\d,]+)", out)
    assert sent and int(sent[1].replace(",", "")) > 0 and int(sent[2].replace(",", "")) > 0, out
    assert "\x1b[" not in out  # not a terminal: plain lines, no cursor movement
    assert_nothing_left(out)


@process_handling
@pytest.mark.parametrize("group", [True, False], ids=["to-the-group", "to-the-parent"])
def test_ctrl_c_stops_the_fleet_in_order_and_still_reports(start_demo, group):
    run = start_demo("--duration", "120", "--workers", "2", "--keys", "300", "--l1-ttl", "0.5")
    run.wait_for(r"^\s+2\.\d s of 120 s")
    if group:
        os.killpg(run.process.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    else:
        run.process.send_signal(signal.SIGINT)
    out = run.finish()
    assert run.process.returncode == 0, out
    assert "interrupted: stopping the workers" in out
    assert re.search(r"summary: 2 workers, [\d.]+ s \(interrupted\)", out), out
    assert "verdict: consistent" in out
    assert "Traceback" not in out  # no worker died of the signal
    assert_nothing_left(out)


@process_handling
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_to_the_group_stop_it_like_ctrl_c(start_demo, signum):
    # SIGTERM: systemd stopping a unit, or kill -- -PGID; SIGHUP: the terminal was closed
    run = start_demo("--duration", "120", "--workers", "2", "--keys", "100")
    run.wait_for(r"^\s+\d+\.\d s of 120 s")
    os.killpg(run.process.pid, signum)
    out = run.finish()
    assert run.process.returncode == 0 and "(interrupted)" in out, out
    assert_nothing_left(out)


@process_handling
def test_a_second_ctrl_c_while_stopping_still_leaves_nothing(start_demo):
    run = start_demo("--duration", "120", "--workers", "3", "--keys", "100")
    run.wait_for(r"^\s+\d+\.\d s of 120 s")
    os.killpg(run.process.pid, signal.SIGINT)
    run.wait_for("interrupted: stopping the workers")
    os.killpg(run.process.pid, signal.SIGINT)
    out = run.finish()
    assert run.process.returncode in (0, 130), out
    assert_nothing_left(out)


@process_handling
def test_a_worker_that_dies_is_named_at_once(start_demo):
    run = start_demo("--duration", "120", "--workers", "2", "--keys", "100")
    pids = run.wait_for(r"workers up \(pids (\d+), (\d+)\)")
    run.wait_for(r"^\s+\d+\.\d s of 120 s")
    os.kill(int(pids[1]), signal.SIGKILL)
    out = run.finish(timeout=30)  # not the 120 s of the run, nor the wait for its records
    assert run.process.returncode == 1, out
    assert re.search(rf"worker 0 \(pid {pids[1]}\) died \(signal 9\): stopping the run", out), out
    directory = re.search(r"started an embedded Redis in (\S+)", out)
    assert directory and not os.path.exists(directory[1])
    assert not alive(int(pids[2]))


def test_with_a_given_redis_it_deletes_its_keys_and_nothing_else(own_redis):
    with redis.Redis.from_url(own_redis.url) as client:
        client.set("someone-elses", b"value")
        out = io.StringIO()
        assert demo.run(own_redis.url, workers=2, duration=1.5, keys=200, write_ratio=0.1, l1_ttl=0.5, out=out) == 0
        text = out.getvalue()
        assert "verdict: consistent" in text and "embedded" not in text
        assert re.search(r"invalidations sent [1-9]", text), text
        assert client.keys("*") == [b"someone-elses"]


def test_with_no_writes_there_is_nothing_to_check(redis_server):
    out = io.StringIO()
    assert demo.run(redis_server.url, workers=1, duration=1, keys=50, write_ratio=0, out=out) == 0
    assert "verdict: nothing to check: no write was made" in out.getvalue()
    assert "1 worker process for" in out.getvalue() and "summary: 1 worker," in out.getvalue()


def test_a_run_no_longer_than_the_l1_ttl_says_its_check_proves_nothing(redis_server):
    out = io.StringIO()
    assert demo.run(redis_server.url, workers=1, duration=1, keys=50, write_ratio=0.2, l1_ttl=5, out=out) == 0
    assert "so none could have been: run longer to check the bound" in out.getvalue()


def test_a_redis_that_does_not_answer_is_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(SystemExit, match=f"cannot reach the Redis at redis://127.0.0.1:{port}"):
            demo.run(f"redis://127.0.0.1:{port}", duration=1, out=io.StringIO())


def test_a_metrics_port_in_use_is_named_and_the_embedded_redis_still_goes(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = io.StringIO()
        with pytest.raises(SystemExit, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            demo.run(duration=1, metrics_port=port, out=out)
    directory = re.search(r"started an embedded Redis in (\S+)", out.getvalue())
    assert directory and not os.path.exists(directory[1])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--workers", "0", "must be from 1 to 64, got 0"),
        ("--workers", "two", "must be an integer, got 'two'"),
        ("--write-ratio", "1.5", "must be from 0 to 1, got 1.5"),
        ("--write-ratio", "nan", "must be from 0 to 1, got nan"),
        ("--duration", "0", "must be from 0.5 to 86400, got 0"),
        ("--keys", "0", "must be from 1 to 1e+06, got 0"),
        ("--metrics-port", "70000", "must be from 0 to 65535, got 70000"),
    ],
)
def test_bad_flags_are_refused_with_the_reason(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", flag, value])
    assert exit_.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_quantiles_are_read_off_the_buckets_as_prometheus_does():
    cumulative = [0.0] * (len(demo.BUCKETS) + 1)
    one_ms = demo.BUCKETS.index(0.001)
    for index in range(one_ms, len(cumulative)):
        cumulative[index] = 100.0  # 100 requests, every one in the bucket (previous bound, 1 ms]
    lower = demo.BUCKETS[one_ms - 1]
    assert demo.quantile(0.5, cumulative) == pytest.approx(lower + (0.001 - lower) / 2)
    assert demo.quantile(0.99, cumulative) == pytest.approx(lower + (0.001 - lower) * 0.99)
    first = [100.0] * len(cumulative)  # all in the first bucket: from 0 to its bound
    assert demo.quantile(0.5, first) == pytest.approx(demo.BUCKETS[0] / 2)
    assert demo.quantile(0.5, [0.0] * len(cumulative)) is None
    beyond = [0.0] * len(demo.BUCKETS) + [5.0]  # every one past the last bound
    assert demo.quantile(0.99, beyond) == demo.BUCKETS[-1]


def test_the_zipf_draw_favours_the_first_numbers():
    import random

    draw = demo.Zipf(range(100), 1.0, random.Random(1)).draw
    counts = [0] * 100
    for _ in range(20_000):
        counts[draw()] += 1
    assert counts[0] > counts[1] > counts[9] > counts[99] > 0
    assert counts[0] / counts[1] == pytest.approx(2.0, rel=0.15)  # 1/rank: the first twice the second


def test_a_long_run_checks_an_even_sample_in_bounded_memory():
    records = demo.Records(max_reads=8)
    for number in range(100):
        records.read(number, 1, float(number))
    kept = [number for number, _, _ in records.reads()]
    assert records.reads_seen == 100 and len(kept) <= 8
    assert kept == list(range(0, 100, records.stride))  # evenly spaced, from the first
