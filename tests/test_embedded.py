"""The embedded Redis (embedded:///directory): one server per directory for every process of
the host, its data kept across restarts of the application and of the server."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import urllib.parse

import pytest

from tiercache import TieredCache, embedded
from tiercache.cli import main

from .conftest import wait_until


@pytest.fixture
def directory(tmp_path):
    """A directory for an embedded Redis, stopped (and its files removed) after the test.
    Short: a unix socket's path has a length limit."""
    import tempfile

    path = tempfile.mkdtemp(prefix="tc-emb-")
    yield path
    embedded.stop(path)
    shutil.rmtree(path, ignore_errors=True)


def _start_and_report(directory, results):
    embedded.ensure(directory)
    results.put(embedded.status(directory)["pid"])


def test_two_processes_starting_at_once_get_one_server(directory):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    starters = [context.Process(target=_start_and_report, args=(directory, results)) for _ in range(2)]
    for starter in starters:
        starter.start()
    pids = {results.get(timeout=30) for _ in starters}
    for starter in starters:
        starter.join(10)
        assert starter.exitcode == 0
    assert len(pids) == 1 and None not in pids
    assert embedded.status(directory)["running"]


def test_the_data_survives_the_applications_restart_and_a_kill_of_the_server(directory):
    url = f"embedded://{directory}"
    with TieredCache.from_url(url, name="kept") as cache:
        assert cache.wait_ready(10)
        assert cache.set("k", {"v": 1}, ttl=None)
    with TieredCache.from_url(url, name="kept") as cache:  # the application restarted
        assert cache.get("k") == {"v": 1}
        pid = embedded.status(directory)["pid"]
        os.kill(pid, signal.SIGKILL)  # the server dies, leaving its socket and pid files
        # The cache's subscriber, reconnecting, starts it again; it replays its file.
        assert wait_until(lambda: cache.get("k") == {"v": 1}, timeout=20)
        assert embedded.status(directory)["pid"] != pid
        os.kill(embedded.status(directory)["pid"], signal.SIGKILL)
        assert wait_until(lambda: not embedded.status(directory)["running"])
    with TieredCache.from_url(url, name="kept") as cache:  # as does the next process's first use
        assert cache.get("k") == {"v": 1}


def test_a_directory_that_cannot_be_used_is_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(embedded.EmbeddedError, match="cannot make the embedded Redis directory .*a-file"):
        TieredCache.from_url(f"embedded://{blocker}/cache", name="x")
    with pytest.raises(embedded.EmbeddedError, match="too long a path"):
        embedded.ensure(str(tmp_path / ("d" * 120)))
    for url, what in (("embedded://host/dir", "three slashes"), ("embedded:///", "no directory")):
        with pytest.raises(ValueError, match=what):
            TieredCache.from_url(url, name="x")


def test_status_and_stop_from_the_command_line(directory, capsys):
    assert main(["embedded", "status", directory]) == 1
    assert "no embedded Redis runs" in capsys.readouterr().out
    embedded.ensure(directory)
    assert main(["embedded", "status", directory]) == 0
    assert "running: pid" in capsys.readouterr().out
    assert main(["embedded", "stop", directory]) == 0
    assert not embedded.status(directory)["running"]
    assert main(["embedded", "stop", directory]) == 1


def test_a_configuration_names_the_directory(directory):
    from tiercache import ConfigError

    with TieredCache.from_config({"name": "conf", "backend": "embedded", "directory": directory}) as cache:
        assert cache.set("k", 1) and cache.get("k") == 1
    assert embedded.status(directory)["running"]
    for config, what in (
        ({"name": "c", "backend": "embedded"}, "needs the field 'directory'"),
        ({"name": "c", "backend": "embedded", "directory": directory, "url": "redis://h"}, "not 'url'"),
        ({"name": "c", "directory": directory}, "for backend 'embedded'"),
    ):
        with pytest.raises(ConfigError, match=what):
            TieredCache.from_config(config)


def test_stale_files_are_replaced_and_a_pid_reused_by_another_process_is_left_alone(directory):
    import pathlib

    # What a crash leaves, with the pid file naming a live process that is no redis-server
    # (here: this test's own).
    (pathlib.Path(directory) / embedded.PIDFILE).write_text(str(os.getpid()))
    (pathlib.Path(directory) / embedded.SOCKET).write_text("")
    embedded.ensure(directory)
    report = embedded.status(directory)
    assert report["running"] and report["pid"] != os.getpid()


def test_a_busy_server_is_waited_for_and_another_directorys_server_is_left_alone(directory):
    import tempfile
    import threading

    import redis

    embedded.ensure(directory)
    pid = embedded.status(directory)["pid"]
    busy = redis.Redis(unix_socket_path=os.path.join(directory, embedded.SOCKET))
    script = "local t = tonumber(redis.call('TIME')[1]) + 2 while tonumber(redis.call('TIME')[1]) < t do end return 1"
    running = threading.Thread(target=busy.eval, args=(script, 0))
    running.start()
    try:
        assert wait_until(lambda: embedded.status(directory)["state"] == embedded.BUSY)
        embedded.ensure(directory)  # waits for it: a busy server is no dead one
    finally:
        running.join(10)
        busy.close()
    assert embedded.status(directory)["pid"] == pid

    other = tempfile.mkdtemp(prefix="tc-emb-")
    try:  # a stale pid file that names another directory's live server
        import pathlib

        (pathlib.Path(other) / embedded.PIDFILE).write_text(str(pid))
        embedded.ensure(other)
        assert embedded.status(directory)["pid"] == pid and embedded.status(directory)["state"] == embedded.UP
    finally:
        embedded.stop(other)
        shutil.rmtree(other, ignore_errors=True)


def test_a_directory_with_url_characters_in_its_name(tmp_path):
    import tempfile

    for odd in ("p%41", "h#x", "q?x", "a b"):
        directory = tempfile.mkdtemp(prefix=f"tc-{odd}-")
        try:
            with TieredCache.from_url("embedded://" + urllib.parse.quote(directory), name="odd") as cache:
                assert cache.set("k", odd) and cache.get("k") == odd
                cache.l1.clear()
                assert cache.get("k") == odd  # from that directory's server
        finally:
            embedded.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)


async def test_an_asyncio_cache_restarts_its_embedded_server_too(directory):
    from tiercache import AsyncTieredCache

    async with AsyncTieredCache.from_url(f"embedded://{directory}", name="akept") as cache:
        assert await cache.wait_ready(10)
        assert await cache.set("k", 1, ttl=None)
        os.kill(embedded.status(directory)["pid"], signal.SIGKILL)
        for _ in range(2000):
            if await cache.get("k") == 1 and embedded.status(directory)["running"]:
                break
            await asyncio.sleep(0.01)
        assert await cache.get("k") == 1
