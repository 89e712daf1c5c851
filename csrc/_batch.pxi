# decode_reply, encode_keys, fill_l1: the per-key loops of the tiered cache's batch
# operations (the Redis keys of a batch, an MGET reply's values, and the L1 fills that follow),
# compiled so each key costs C rather than bytecode. Included by _local.pyx, after _store.pxi
# (fill_l1 writes into LocalCache through its cdef methods).
#
# Its own file because these are plain functions over lists and codec bytes, called by the
# codec and the batch operations; they are not part of the L1 or its front.


def decode_reply(list missing, list blobs, dict found, make_unpacker, dict unpack_kwargs,
                 int format_byte, Py_ssize_t header_size, double now_ms, double l1_ttl):
    """The per-key loop of get_many, for values in the plain msgpack format.

    Puts each decoded value in found (under its key from missing) and returns
    (fills, slow): fills lists (index, value, l1_ttl) for L1, slow the indices the caller
    must decode itself (other formats, or bytes that did not decode). The header is a
    format byte and a big-endian 8-byte deadline in unix ms (tiercache/codec.py). Payloads
    go through one make_unpacker(**unpack_kwargs) stream (msgpack.Unpacker): the options
    are parsed once per reply, not once per value.
    """
    cdef list fills = []
    cdef list slow = []
    cdef Py_ssize_t i, size
    cdef const unsigned char *raw
    cdef unsigned long long deadline, consumed = 0
    cdef int b
    cdef double ttl
    cdef object feed = None, read_one = None, tell = None, unpacker
    for i in range(len(blobs)):
        data = blobs[i]
        if data is None:
            continue
        if type(data) is not bytes:
            slow.append(i)
            continue
        size = PyBytes_GET_SIZE(data)
        raw = <const unsigned char *>PyBytes_AS_STRING(data)
        if size <= header_size or raw[0] != format_byte:
            slow.append(i)
            continue
        deadline = 0
        for b in range(1, 9):
            deadline = (deadline << 8) | raw[b]
        if feed is None:
            unpacker = PyObject_Call(make_unpacker, (), unpack_kwargs)
            feed, read_one, tell = unpacker.feed, unpacker.unpack, unpacker.tell
            consumed = 0
        try:
            feed(PyBytes_FromStringAndSize(<char *>raw + header_size, size - header_size))
            consumed += <unsigned long long>(size - header_size)
            value = read_one()
            if tell() != consumed:
                raise ValueError("more than one value")
        except Exception:  # not one whole value: the rest of the stream is garbage, start anew
            slow.append(i)
            feed = None
            continue
        found[missing[i]] = value
        if deadline == 0:
            ttl = l1_ttl
        else:
            ttl = min(l1_ttl, (<double>deadline - now_ms) / 1000.0)
        fills.append((i, value, ttl))
    return fills, slow


def encode_keys(bytes base, list keys, slow):
    """[base + key as UTF-8 for each key]: the batch form of KeyCodec.redis_key. Keys that
    need more than that (bytes, a leading "@" or "%", lone surrogates, other types) go
    through slow(key)."""
    cdef list out = []
    cdef const char *text
    cdef Py_ssize_t size
    cdef Py_ssize_t base_size = len(base)
    cdef bytes encoded
    for key in keys:
        text = NULL
        if type(key) is str:
            try:
                text = PyUnicode_AsUTF8AndSize(key, &size)  # cached by str for ASCII keys
            except UnicodeEncodeError:
                text = NULL
        if text == NULL or (size and (text[0] == b'@' or text[0] == b'%')):
            out.append(slow(key))
            continue
        encoded = PyBytes_FromStringAndSize(NULL, base_size + size)
        memcpy(PyBytes_AS_STRING(encoded), PyBytes_AS_STRING(base), base_size)
        memcpy(PyBytes_AS_STRING(encoded) + base_size, text, size)
        out.append(encoded)
    return out


def fill_l1(LocalCache l1 not None, list l1_keys, list fills, list allowed, bint cache_none):
    """Put the (index, value, ttl) fills whose index is allowed into l1 (one clock read)."""
    cdef Py_ssize_t index
    cdef double ttl, now = NAN
    cdef double slack = CLOCK_SLACK if l1._timer is None else 0.0
    try:
        for index, value, ttl in fills:
            if allowed[index] and ttl > 0 and (value is not None or cache_none):
                if now != now:
                    now = l1._now()
                key = l1_keys[index]
                l1._store(key, fingerprint(PyObject_Hash(key)), value, now + ttl - slack, now)
    finally:
        l1._release_pending()
