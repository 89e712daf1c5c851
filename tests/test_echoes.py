"""drop_echoes: the sync subscriber consumes echoes of its own cache's messages off the socket
(without the GIL in the compiled twin) and leaves everything else, byte for byte, to redis-py."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiercache import _local_py
from tiercache.core import invalidation
from tiercache.local import ECHO_LOST, ECHO_NOTHING, ECHO_ONLY, ECHO_OTHER, NO_EXTENSIONS

from .conftest import wait_until

TWINS = [pytest.param(_local_py, id="pure")]
if not NO_EXTENSIONS:
    from tiercache import _local_c

    TWINS.append(pytest.param(_local_c, id="compiled"))

ORIGIN = bytes(range(16))
MARKER = invalidation.echo_marker(ORIGIN)
CHANNEL = b"tc:c:inv:0"


def frame(data: bytes, channel: bytes = CHANNEL, kind: bytes = b"*") -> bytes:
    """A pub/sub message as Redis sends it (kind b"*" in RESP2, b">" in RESP3)."""
    return kind + b"3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(data), data)


def echo(seq: int = 1, keys: int = 1) -> bytes:
    publisher = invalidation.Publisher(CHANNEL)
    publisher.origin = ORIGIN
    publisher._seq = seq - 1
    return publisher.keys_message([b"tc:c:d:key:%d" % i for i in range(keys)])


def foreign() -> bytes:
    return invalidation.Publisher(CHANNEL).keys_message([b"tc:c:d:key"])


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def pending(sock: socket.socket) -> bytes:
    """What is left to read on sock (without waiting)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_the_marker_starts_every_message_of_its_origin_and_no_other():
    publisher = invalidation.Publisher(CHANNEL)
    marker = invalidation.echo_marker(publisher.origin)
    assert publisher.keys_message([b"k"]).startswith(marker)
    assert publisher.flush_message(("a",)).startswith(marker)
    assert not invalidation.Publisher(CHANNEL).keys_message([b"k"]).startswith(marker)
    assert len(marker) == 20  # array header, version, bin8 header and the 16 origin bytes


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("kind", [b"*", b">"])
def test_an_echo_frame_is_measured_exactly(twin, kind):
    whole = frame(echo(), kind=kind)
    assert twin.echo_frame_length(whole, MARKER) == len(whole)
    assert twin.echo_frame_length(whole + frame(foreign()), MARKER) == len(whole)
    for cut in range(len(whole)):  # never a frame that is not all there
        assert twin.echo_frame_length(whole[:cut], MARKER) == -1


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize(
    "data",
    [
        frame(foreign()),  # another origin's message
        frame(echo(), kind=b"+"),  # not a push or an array
        b"*3\r\n$9\r\nsubscribe\r\n$10\r\ntc:c:inv:0\r\n:1\r\n",
        b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
        b"+PONG\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n",
        frame(MARKER[:-1]),  # data shorter than the marker
        frame(echo()).replace(b"\r\n$", b"\r\n%", 1),
        frame(echo()).replace(b"$10\r\n", b"$-1\r\n", 1),  # a negative length
        frame(echo())[:-2] + b"\r\r",  # no CRLF after the data
        b"*3\r\n$7\r\nmessage\r\n$9999999999\r\n",  # a length past any frame
    ],
)
def test_anything_but_an_echo_is_not_one(twin, data):
    assert twin.echo_frame_length(data, MARKER) == -1


@given(st.binary(max_size=80), st.binary(max_size=80), st.sampled_from([b"*", b">", b"$"]))
def test_the_twins_agree_on_any_bytes(channel, data, kind):
    if NO_EXTENSIONS:
        pytest.skip("TIERCACHE_NO_EXTENSIONS is set")
    for blob in (frame(MARKER + data, channel, kind), frame(data, channel, kind), channel + data):
        assert _local_c.echo_frame_length(blob, MARKER) == _local_py.echo_frame_length(blob, MARKER)


@pytest.mark.parametrize("twin", TWINS)
def test_echoes_alone_are_consumed(twin, pair):
    left, right = pair
    right.sendall(b"".join(frame(echo(seq)) for seq in range(1, 50)))
    assert twin.drop_echoes(left, MARKER, 0.05) == ECHO_ONLY
    assert pending(left) == b""


@pytest.mark.parametrize("twin", TWINS)
def test_what_follows_the_echoes_is_left_whole(twin, pair):
    left, right = pair
    rest = frame(foreign(), kind=b">") + frame(echo(7))  # an echo after it is redis-py's too
    right.sendall(frame(echo(1)) + frame(echo(2)) + rest)
    assert twin.drop_echoes(left, MARKER, 1.0) == ECHO_OTHER
    assert pending(left) == rest


@pytest.mark.parametrize("twin", TWINS)
def test_a_partial_echo_is_left_to_redis_py(twin, pair):
    left, right = pair
    whole = frame(echo())
    right.sendall(whole[:30])
    assert twin.drop_echoes(left, MARKER, 1.0) == ECHO_OTHER
    right.sendall(whole[30:])
    assert pending(left) == whole


@pytest.mark.parametrize("twin", TWINS)
def test_an_echo_longer_than_the_peek_is_left_to_redis_py(twin, pair):
    left, right = pair
    big = frame(echo(keys=2_000))
    assert len(big) > _local_py.PEEK_BYTES
    right.sendall(big)
    time.sleep(0.05)  # all of it in the socket before the peek
    assert twin.drop_echoes(left, MARKER, 1.0) == ECHO_OTHER
    assert pending(left) == big


@pytest.mark.parametrize("twin", TWINS)
def test_silence_is_nothing_after_the_timeout(twin, pair):
    left, _ = pair
    start = time.monotonic()
    assert twin.drop_echoes(left, MARKER, 0.05) == ECHO_NOTHING
    assert time.monotonic() - start >= 0.04


@pytest.mark.parametrize("twin", TWINS)
def test_echoes_that_keep_coming_do_not_hold_the_wait_past_its_timeout(twin, pair):
    left, right = pair
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            right.sendall(frame(echo()))
            time.sleep(0.001)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        assert twin.drop_echoes(left, MARKER, 0.2) == ECHO_ONLY  # returns, having heard them
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize("twin", TWINS)
def test_lingering_after_echoes_still_reports_what_follows_and_keeps_the_timeout(twin, pair):
    left, right = pair
    rest = frame(foreign())

    def later() -> None:
        time.sleep(0.02)
        right.sendall(rest)

    right.sendall(frame(echo(1)))
    thread = threading.Thread(target=later)
    thread.start()
    try:
        assert twin.drop_echoes(left, MARKER, 5.0, 0.05) == ECHO_OTHER
    finally:
        thread.join()
    assert pending(left) == rest
    right.sendall(frame(echo(2)))
    start = time.monotonic()
    assert twin.drop_echoes(left, MARKER, 0.1, 30.0) == ECHO_ONLY  # a linger past the timeout ends with it
    assert time.monotonic() - start < 5.0


@pytest.mark.parametrize("twin", TWINS)
def test_a_closed_or_broken_socket_is_left_to_redis_py(twin, pair):
    left, right = pair
    right.close()
    assert twin.drop_echoes(left, MARKER, 1.0) == ECHO_OTHER
    left.close()
    assert twin.drop_echoes(left, MARKER, 1.0) == ECHO_OTHER  # fileno() is -1


def test_the_outcomes_are_four_distinct_numbers():
    assert sorted({ECHO_NOTHING, ECHO_ONLY, ECHO_OTHER, ECHO_LOST}) == [0, 1, 2, 3]


def test_a_writer_never_decodes_its_own_echoes_and_still_hears_others(make_cache):
    """Through a real Redis: the subscriber's waits consume this cache's echoes, and another
    cache's writes, interleaved with them, still reach L1."""
    ours, theirs = make_cache(), make_cache()
    subscriber = ours._parts.subscriber
    seen: list[dict[str, object]] = []
    receive = subscriber._receive

    def recording(timeout: float) -> object:
        message = receive(timeout)
        if message is not None:
            seen.append(message)
        return message

    subscriber._receive = recording
    time.sleep(3 * invalidation.POLL)  # the wait under way when it was swapped in is over
    for round_ in range(100):
        ours.set(f"own:{round_}", round_)
    assert wait_until(lambda: invalidation.ECHO in seen)
    # An echo reaches redis-py only behind a frame redis-py reads (a PING reply) in one recv.
    marker = subscriber.state.echo_marker
    decoded = [m for m in seen if isinstance(m.get("data"), bytes) and m["data"].startswith(marker)]
    assert len(decoded) <= 10

    received = ours.stats()["invalidations_received"]
    for round_ in range(50):
        ours.set(f"own:{round_}", round_)
        ours.get("shared")  # L1 holds "shared" (or its absence) ...
        theirs.set("shared", round_)  # ... until the other cache's invalidation drops it
        assert wait_until(lambda round_=round_: ours.get("shared") == round_)
    assert ours.stats()["invalidations_received"] - received >= 50


class SplittingProxy:
    """A loopback TCP proxy that delivers whatever the server sends in two pieces, a few ms
    apart: a frame crossing two TCP segments, as on a real network."""

    def __init__(self, port: int, gap: float = 0.005) -> None:
        self.target = ("127.0.0.1", port)
        self.gap = gap
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, split: bool) -> None:
        try:
            while data := source.recv(65536):
                if split and len(data) > 1:
                    sink.sendall(data[: len(data) // 2])
                    time.sleep(self.gap)
                    sink.sendall(data[len(data) // 2 :])
                else:
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_messages_that_arrive_in_pieces_are_read_whole(make_cache, redis_server):
    """What is not an echo goes to redis-py with the wait's timeout: the second half of a
    message a few ms behind its first is read, not a broken connection."""
    proxy = SplittingProxy(redis_server.port)
    try:
        reader = make_cache(url=f"redis://127.0.0.1:{proxy.port}/0")  # waits for ready
        writer = make_cache()
        for round_ in range(20):
            reader.get("shared")
            writer.set("shared", round_)
            assert wait_until(lambda round_=round_: reader.get("shared") == round_)
            reader.set(f"own:{round_}", round_)  # echoes through the proxy too
        stats = reader.stats()
        assert stats["reconnects"] == 0 and stats["l1_serving"]
        assert stats["invalidations_received"] >= 20
    finally:
        proxy.close()
