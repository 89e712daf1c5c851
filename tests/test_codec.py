"""The codec round-trips every supported value exactly; the key codec is injective."""

from __future__ import annotations

import time
from datetime import timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache.codec import Codec, KeyCodec
from tiercache.errors import DecodeError, SerializationError

hashables = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
timezones = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439))
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**200)
    | st.integers(min_value=-(2**200), max_value=-(2**64))
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.datetimes(timezones=timezones)
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.decimals(allow_nan=False)
    | st.uuids()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=12,
)

CODECS = {
    "msgpack": Codec(),
    "msgpack-compress-all": Codec(compress_threshold=0),
    "msgpack-plain": Codec(compression=None),
    "pickle": Codec("pickle", secret=b"k"),
}


def same(a, b):
    """Equal, and of the same type all the way down (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    return a == b


@pytest.mark.parametrize("codec", list(CODECS.values()), ids=list(CODECS))
@settings(max_examples=300, deadline=None)
@given(value=values)
def test_round_trip_is_exact(codec, value):
    data = codec.encode(value, b"tc:t:key", 60_000)
    decoded, _ = codec.decode(data, b"tc:t:key")
    assert same(decoded, value)


def test_deadline_travels_in_the_header():
    codec = Codec()
    now_ms = time.time() * 1000
    _, deadline = codec.decode(codec.encode("v", b"k", 5_000), b"k")
    assert now_ms + 4_000 < deadline <= now_ms + 6_000
    assert codec.decode(codec.encode("v", b"k", None), b"k")[1] == 0
    assert codec.decode(codec.encode(7, b"k", 5_000), b"k") == (7, None)  # plain integers


def test_every_codec_reads_every_format():
    value = {"x": "y" * 5000}
    blobs = [codec.encode(value, b"k", None) for codec in CODECS.values() if codec is not CODECS["pickle"]]
    for codec in CODECS.values():
        for blob in blobs:
            assert codec.decode(blob, b"k")[0] == value


@pytest.mark.parametrize(
    "blob", [b"", b"\x11", b"\x10" + bytes(8) + b"\xc1", b"\x99" + bytes(8), b"12x", b"\x21" + bytes(40)]
)
def test_malformed_bytes_raise_decode_error(blob):
    with pytest.raises(DecodeError):
        Codec().decode(blob, b"k")


def test_pickle_is_refused_without_a_secret_and_without_a_signature():
    signed = Codec("pickle", secret="a").encode({1, 2}, b"k", None)
    with pytest.raises(DecodeError, match="no pickle secret"):
        Codec().decode(signed, b"k")
    with pytest.raises(DecodeError, match="signature"):
        Codec("pickle", secret="b").decode(signed, b"k")


@pytest.mark.parametrize("value", [object(), {"a": object()}, [lambda: 1], {1: {2: open}}])
def test_unencodable_values_raise_type_error(value):
    with pytest.raises(TypeError, match="cannot serialize"):
        Codec().encode(value, b"k", None)
    assert issubclass(SerializationError, TypeError)


@pytest.mark.parametrize("name", ["lz4", "zstd"])
def test_optional_compressors(name):
    module = {"lz4": "lz4.frame", "zstd": "zstandard"}[name]
    pytest.importorskip(module)
    codec = Codec(compression=name, compress_threshold=0)
    assert Codec().decode(codec.encode(["v"] * 100, b"k", None), b"k")[0] == ["v"] * 100


# -- keys -----------------------------------------------------------------------------------

segments = st.text(min_size=1, max_size=6, alphabet=st.sampled_from("ab:@%B3A25\\*\u00e9\ud800"))
paths = st.lists(segments, max_size=3).map(tuple)
keys = st.text(max_size=6, alphabet=st.sampled_from("ab:@%B3A25\\*\u00e9\ud800")) | st.binary(max_size=4)


@settings(max_examples=500, deadline=None)
@given(first=st.tuples(paths, keys), second=st.tuples(paths, keys))
def test_distinct_namespace_key_pairs_never_share_a_redis_key(first, second):
    def redis_key(path, key):
        codec = KeyCodec("tc", "users")
        for segment in path:
            codec = codec.child(segment)
        return codec.redis_key(key)

    if first != second:
        assert redis_key(*first) != redis_key(*second)


@settings(max_examples=300, deadline=None)
@given(path=paths, key=keys)
def test_parse_recovers_namespace_and_key(path, key):
    codec = KeyCodec("tc", "c:a%t")
    for segment in path:
        codec = codec.child(segment)
    assert KeyCodec("tc", "c:a%t").parse(codec.redis_key(key)) == (path, key)


def test_namespace_and_name_must_be_non_empty_strings():
    with pytest.raises(ValueError, match="namespace must be a non-empty str"):
        KeyCodec("tc", "n").child("")
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        KeyCodec("tc", "")
    with pytest.raises(TypeError, match="str or bytes"):
        KeyCodec("tc", "n").redis_key(3)


@settings(max_examples=200, deadline=None)
@given(path=paths, batch=st.lists(keys, max_size=8))
def test_batch_key_encoding_matches_one_by_one(path, batch):
    codec = KeyCodec("tc", "n")
    for segment in path:
        codec = codec.child(segment)
    assert codec.redis_keys(batch) == [codec.redis_key(key) for key in batch]


# -- hostile values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [2**64, -(2**64), 10**5000, -(10**5000) + 1, 2**63, -(2**63) - 1],
    ids=["2^64", "-2^64", "5001 digits", "-5000 digits", "2^63", "-2^63-1"],
)
def test_integers_of_any_size_round_trip(number):
    codec = Codec()
    assert codec.decode(codec.encode(number, b"k", None), b"k")[0] == number


def test_big_integers_written_as_digits_by_earlier_versions_still_read():
    import msgpack

    from tiercache.codec import HEADER, MSGPACK

    old = HEADER.pack(MSGPACK, 0) + msgpack.packb(msgpack.ExtType(10, str(2**70).encode()))
    assert Codec().decode(old, b"k")[0] == 2**70


def deep_list(depth):
    outer = inner = []
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return outer


def cyclic_list():
    value = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    "make", [lambda: deep_list(100_000), cyclic_list, lambda: tuple_chain(5000)], ids=["deep", "cyclic", "deep-tuples"]
)
def test_values_too_deep_or_cyclic_are_a_serialization_error(make):
    with pytest.raises(SerializationError):
        Codec().encode(make(), b"k", None)


def tuple_chain(depth):
    value = ()
    for _ in range(depth):
        value = (value,)
    return value


@pytest.mark.parametrize("compression", ["zlib", "lz4", "zstd"])
def test_a_value_that_inflates_past_max_value_size_is_not_decoded(compression):
    import msgpack

    from tiercache.codec import HEADER, LZ4, MSGPACK, ZLIB, ZSTD

    codec = Codec(compression=compression, max_value_size=1_000_000)
    bomb = msgpack.packb(b"\0" * 5_000_000)
    compressors = codec._compressors
    number = {"zlib": ZLIB, "lz4": LZ4, "zstd": ZSTD}[compression]
    data = HEADER.pack(MSGPACK | number, 0) + compressors[number][0](bomb)
    assert len(data) < 100_000
    with pytest.raises(DecodeError, match="max_value_size"):
        codec.decode(data, b"k")
    fine = "x" * 900_000
    assert codec.decode(codec.encode(fine, b"k", None), b"k")[0] == fine
    with pytest.raises(SerializationError, match="max_value_size"):
        codec.encode("x" * 1_000_001, b"k", None)


@pytest.mark.parametrize("name", ["\ud800", "a\udfffb"])
def test_a_name_that_is_not_text_is_refused(name):
    with pytest.raises(ValueError, match="valid text"):
        KeyCodec("tc", name)


@pytest.mark.parametrize("depth", [64, 65, 300, 5000])
def test_extension_types_nested_too_deep_are_refused_both_ways_not_a_crash(depth):
    import msgpack

    from tiercache.codec import HEADER, MAX_EXT_DEPTH, MSGPACK

    value = None
    for _ in range(depth):
        value = (value,)
    codec = Codec()
    if depth <= MAX_EXT_DEPTH:
        assert codec.decode(codec.encode(value, b"k", None), b"k")[0] == value
        return
    with pytest.raises(SerializationError, match="nested deeper"):
        codec.encode(value, b"k", None)
    blob = msgpack.packb(None)  # the same bytes a hostile writer could put under a key
    for _ in range(depth):
        blob = msgpack.packb(msgpack.ExtType(1, b"\x91" + blob))  # a tuple (ext 1) of a 1-item list
    with pytest.raises(DecodeError, match="nested deeper"):
        codec.decode(HEADER.pack(MSGPACK, 0) + blob, b"k")
