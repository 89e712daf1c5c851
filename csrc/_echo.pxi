# drop_echoes: the sync subscriber's wait for invalidations, with the GIL released.
#
# Redis pub/sub sends a message to every subscriber, its publisher's own subscriber included.
# A TieredCache that writes therefore hears each of its own invalidations again (an echo),
# which it only has to ignore. Reading an echo through redis-py costs the subscriber thread
# the GIL and ~60 us of the process's CPU per write (3 polls, 2 reads and a dozen futex calls
# on this machine, a third of them in the writing thread, which waits for the GIL), for
# nothing. Here the thread waits in poll() and consumes echoes straight off the socket
# without the GIL: it takes the GIL back only when something else arrives.
#
# An echo is recognised by its exact shape and nothing looser: a RESP2 (*3) or RESP3 (>3)
# pub/sub "message" frame, complete in one peek, whose data starts with `marker` (the
# header of this cache instance's messages: version and its 16 random origin bytes,
# invalidation.Publisher.echo_marker). Anything else (another origin's message, a PING
# reply, a subscribe confirmation, a tracking push, a frame longer than the peek buffer, EOF,
# an error) stops the wait and is left in the socket for redis-py to read, so redis-py stays
# the parser of everything that matters. The caller must only call this when redis-py's
# parser holds no buffered bytes, i.e. when the socket's next byte begins a frame.
#
# No Python code runs while the GIL is released, and the only shared state is the file
# descriptor, which only the subscriber thread closes (another thread closing the client's
# pool makes poll() report POLLNVAL, which ends the wait as "something else").

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLIN
        POLLERR
        POLLHUP
        POLLNVAL


cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    enum:
        MSG_PEEK
        MSG_DONTWAIT

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)

cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN

# What drop_echoes saw (the pure twin, _local_py.drop_echoes, returns the same numbers).
cdef enum:
    ECHO_NOTHING = 0  # the timeout passed with nothing on the socket
    ECHO_ONLY = 1     # echoes arrived and were consumed, nothing else
    ECHO_OTHER = 2    # something other than an echo waits (or EOF or an error): let redis-py read
    ECHO_LOST = 3     # a consume returned less than was peeked: the stream's framing is lost
    PEEK_BYTES = 8192  # an echo longer than this (a set_many of many keys) goes to redis-py


cdef inline Py_ssize_t _number(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t end,
                               Py_ssize_t *value) noexcept nogil:
    """Parse decimal digits and CRLF at pos; the position after them, or -1."""
    cdef Py_ssize_t start = pos
    cdef Py_ssize_t n = 0
    while pos < end and buf[pos] >= 48 and buf[pos] <= 57:
        if pos - start >= 9:  # longer than any frame here could be
            return -1
        n = n * 10 + (buf[pos] - 48)
        pos += 1
    if pos == start or pos + 2 > end or buf[pos] != 13 or buf[pos + 1] != 10:
        return -1
    value[0] = n
    return pos + 2


cdef Py_ssize_t echo_length(const unsigned char *buf, Py_ssize_t end,
                            const unsigned char *marker, Py_ssize_t marker_len) noexcept nogil:
    """The length of the echo frame at the start of buf[:end], or -1 if it is not one
    (or not all of it is there)."""
    cdef const char *head = b"3\r\n$7\r\nmessage\r\n$"
    cdef Py_ssize_t pos, size = 0
    if end < 18 or (buf[0] != 42 and buf[0] != 62):  # '*' or '>'
        return -1
    for pos in range(17):
        if buf[pos + 1] != <unsigned char>head[pos]:
            return -1
    pos = _number(buf, 18, end, &size)  # the channel
    if pos < 0 or pos + size + 3 > end:
        return -1
    pos += size
    if buf[pos] != 13 or buf[pos + 1] != 10 or buf[pos + 2] != 36:  # CRLF '$'
        return -1
    pos = _number(buf, pos + 3, end, &size)  # the data
    if pos < 0 or size < marker_len or pos + size + 2 > end:
        return -1
    if memcmp(buf + pos, marker, marker_len) != 0:
        return -1
    pos += size
    if buf[pos] != 13 or buf[pos + 1] != 10:
        return -1
    return pos + 2


def drop_echoes(sock, bytes marker, double timeout, double linger=0.0):
    """Wait up to timeout seconds for the subscriber socket to hold something other than
    echoes of this cache's own messages, consuming the echoes that arrive meanwhile, and
    pausing linger seconds after each batch of them (so a writing process wakes once per
    linger, not once per write). Returns ECHO_NOTHING, ECHO_ONLY, ECHO_OTHER or ECHO_LOST
    (see above). Only for a plain (not TLS) socket whose next byte begins a frame."""
    cdef int fd = sock.fileno()
    cdef const unsigned char *mark = <const unsigned char *>PyBytes_AS_STRING(marker)
    cdef Py_ssize_t mark_len = PyBytes_GET_SIZE(marker)
    cdef unsigned char buf[PEEK_BYTES]
    cdef pollfd waiting
    cdef timespec pause
    cdef double deadline = monotonic() + timeout
    cdef double rest
    cdef int outcome = ECHO_NOTHING
    cdef int wait_ms, ready
    cdef ssize_t peeked, taken
    cdef Py_ssize_t consumed, length
    if fd < 0 or mark_len == 0:
        return ECHO_OTHER
    with nogil:
        while True:
            wait_ms = <int>((deadline - monotonic()) * 1000.0 + 0.999)
            waiting.fd = fd
            waiting.events = POLLIN
            waiting.revents = 0
            ready = poll(&waiting, 1, wait_ms if wait_ms > 0 else 0)
            if ready < 0:
                if errno == EINTR:
                    continue
                outcome = ECHO_OTHER
                break
            if ready == 0:
                break  # timed out: ECHO_NOTHING, or ECHO_ONLY if echoes came first
            if not (waiting.revents & POLLIN):  # POLLERR, POLLHUP, POLLNVAL alone
                outcome = ECHO_OTHER
                break
            peeked = recv(fd, buf, PEEK_BYTES, MSG_PEEK | MSG_DONTWAIT)
            if peeked < 0 and (errno == EINTR or errno == EAGAIN):
                continue
            if peeked <= 0:  # EOF or an error: redis-py reports it
                outcome = ECHO_OTHER
                break
            consumed = 0
            while True:
                length = echo_length(buf + consumed, peeked - consumed, mark, mark_len)
                if length < 0:
                    break
                consumed += length
            if consumed == 0:
                outcome = ECHO_OTHER
                break
            while True:
                taken = recv(fd, buf, <size_t>consumed, MSG_DONTWAIT)
                if not (taken < 0 and errno == EINTR):
                    break
            if taken != consumed:  # cannot happen on a stream socket holding the peeked bytes
                outcome = ECHO_LOST
                break
            outcome = ECHO_ONLY
            if consumed < peeked:
                outcome = ECHO_OTHER
                break
            if linger > 0.0:
                rest = min(linger, deadline - monotonic())
                if rest > 0.0:
                    pause.tv_sec = <long>rest
                    pause.tv_nsec = <long>((rest - pause.tv_sec) * 1e9)
                    nanosleep(&pause, NULL)
    return outcome


def echo_frame_length(bytes data, bytes marker):
    """The length of the echo frame data starts with, or -1 (drop_echoes' test, for the
    twin tests)."""
    return echo_length(<const unsigned char *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                       <const unsigned char *>PyBytes_AS_STRING(marker), PyBytes_GET_SIZE(marker))
