"""How values and keys look in Redis.

Value layout (everything but plain integers):

    byte 0      format: high nibble the serializer (1 msgpack, 2 pickle), low nibble the
                compression (0 none, 1 zlib, 2 lz4, 3 zstd)
    bytes 1-8   deadline: unix time in ms when the Redis entry expires, 0 = never. A reader
                caps its L1 TTL by it without asking Redis for the PTTL.
    [32 bytes]  pickle only: HMAC-SHA256 over Redis key + format byte + payload
    payload     the serialized value, compressed when it was over the threshold

Plain integers are stored as ASCII digits with no header, so Redis INCRBY works on them.
Every reader understands every format, so changing the serializer or compression of a
running fleet needs no migration. Nothing outside this module knows this layout: the
EXPIRE script's view of it and the batch decoding of get_many are here too.

Keys: ``{prefix}:{name}:@{namespace}:...:{key}`` (see KeyCodec): distinct (namespace path,
key) pairs never map to the same Redis key, and ``KeyCodec.parse`` recovers them.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import hashlib
import hmac
import math
import pickle
import random
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from typing import Any, Final

import msgpack

from .errors import DecodeError, SerializationError, SignatureError
from .local import decode_reply, encode_keys

HEADER: Final = struct.Struct(">BQ")
MSGPACK: Final = 0x10
PICKLE: Final = 0x20
SERIALIZER_MASK, COMPRESSION_MASK = 0xF0, 0x07
NONE, ZLIB, LZ4, ZSTD = 0, 1, 2, 3
# A value written with a stale window or for early refresh (core/freshness.py): its header
# goes on with the last load's duration in ms (4 bytes), its deadline is a logical expiry
# that readers enforce (Redis keeps it longer, for the window), and the format byte has
# this bit set, so a reader that knows nothing of it takes the slow path (unknown format).
EXTENDED: Final = 0x08
HEADER_EXT: Final = struct.Struct(">BQI")
MAX_DELTA_MS: Final = 2**32 - 1
SIGNATURE_SIZE: Final = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DIGITS = frozenset(b"-0123456789")

Fill = tuple[int, Any, float]
"""A value for L1 from a batch: (index in the batch, value, L1 ttl in seconds)."""

# Every format byte a header can start with (serializer | compression). No plain integer
# starts with one: digits are 0x30-0x39 and "-" is 0x2D.
HEADER_FORMATS: Final = frozenset(
    kind | packing | extended
    for kind in (MSGPACK, PICKLE)
    for packing in (NONE, ZLIB, LZ4, ZSTD)
    for extended in (0, EXTENDED)
)

# Rewrites the deadline in a tiercache value's header along with the Redis TTL, so readers
# never give an L1 copy more time than Redis has left. KEYS[1]: the key; ARGV (expire_args):
# PX or "" for none, the new 8-byte deadline, a stale window in ms, the caller's clock (unix
# ms). A value with the extended header past its logical expiry is gone (0); otherwise Redis
# keeps it after the new deadline as long as it kept it after the old one (its own stale
# window; the given one if that cannot be told). Plain integers have no header: only their
# Redis TTL changes.
EXPIRE_SCRIPT: Final = f"""
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local headed = {{{", ".join(f"[{fmt}] = true" for fmt in sorted(HEADER_FORMATS))}}}
local byte = string.byte(v, 1)
if headed[byte] and string.len(v) >= {HEADER.size} then
  local px = ARGV[1]
  if bit.band(byte, {EXTENDED}) ~= 0 then
    local old, now = 0, tonumber(ARGV[4])
    for i = 2, 9 do old = old * 256 + string.byte(v, i) end
    if old ~= 0 and old <= now then return 0 end
    if px ~= '' then
      local left, extra = redis.call('PTTL', KEYS[1]), tonumber(ARGV[3])
      if left > 0 and old ~= 0 then extra = math.max(0, left - (old - now)) end
      px = tonumber(px) + extra
    end
  end
  v = string.sub(v, 1, 1) .. ARGV[2] .. string.sub(v, {HEADER.size + 1})
  if px == '' then redis.call('SET', KEYS[1], v) else redis.call('SET', KEYS[1], v, 'PX', px) end
elseif ARGV[1] == '' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


def deadline_ms(ttl_ms: int | None) -> int:
    """The header's deadline for a value that lives ttl_ms from now (0: never expires)."""
    return int(time.time() * 1000) + ttl_ms if ttl_ms else 0


def expire_args(ttl_ms: int | None, window_ms: int = 0) -> tuple[int | str, bytes, int, int]:
    """EXPIRE_SCRIPT's ARGV for a new ttl (None: never expires); window_ms: a stale window
    for a value with the extended header whose own cannot be told."""
    px: int | str = "" if ttl_ms is None else ttl_ms
    return px, deadline_ms(ttl_ms).to_bytes(8, "big"), window_ms, int(time.time() * 1000)


def ttl_until(deadline: int, cap: float, now_ms: float) -> float:
    """Seconds an L1 copy may live for a value whose header deadline is deadline (0: never),
    at most cap; 0 or less means do not keep it."""
    if not deadline:
        return cap
    return min(cap, (deadline - now_ms) / 1000.0)


# msgpack ext type codes
_TUPLE, _SET, _FROZENSET, _DATETIME, _DATE, _TIME, _TIMEDELTA, _DECIMAL, _UUID, _BIGINT, _BIGINT_BYTES = range(1, 12)
# _BIGINT (decimal digits) is still read; new values beyond 64 bits are written as _BIGINT_BYTES
# (two's complement, big-endian), which has no 4,300-digit limit (sys.set_int_max_str_digits).


# Tuples, sets and the other extension types nest by calling back into msgpack from Python
# once per level, on the C stack: a few hundred levels crash the interpreter (not a Python
# RecursionError). Encoding and decoding both stop at this many levels of extension types.
MAX_EXT_DEPTH: Final = 64
_depth = threading.local()


class _Nested:
    """One more level of extension types, or an error past MAX_EXT_DEPTH (per thread)."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __enter__(self) -> None:
        level = getattr(_depth, "level", 0) + 1
        if level > MAX_EXT_DEPTH:
            raise self.error(f"tuples, sets and other extension types nested deeper than {MAX_EXT_DEPTH}")
        _depth.level = level

    def __exit__(self, *exc_info: object) -> None:
        _depth.level -= 1


_ENCODING, _DECODING = _Nested(SerializationError), _Nested(DecodeError)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, default=_to_msgpack, strict_types=True, use_bin_type=True)
    return packed


def _pack_nested(value: Any) -> bytes:
    with _ENCODING:
        return _pack(value)


def _to_msgpack(obj: Any) -> Any:
    """msgpack's hook for everything it does not pack natively (strict_types is on)."""
    if isinstance(obj, tuple):
        return msgpack.ExtType(_TUPLE, _pack_nested(list(obj)))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_FROZENSET, _pack_nested(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_SET, _pack_nested(list(obj)))
    if isinstance(obj, datetime):
        return msgpack.ExtType(_DATETIME, obj.isoformat().encode())
    if isinstance(obj, date):
        return msgpack.ExtType(_DATE, obj.isoformat().encode())
    if isinstance(obj, dtime):
        return msgpack.ExtType(_TIME, obj.isoformat().encode())
    if isinstance(obj, timedelta):
        return msgpack.ExtType(_TIMEDELTA, _pack([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    if isinstance(obj, int):
        if type(obj) is int:  # beyond 64 bits
            return msgpack.ExtType(_BIGINT_BYTES, obj.to_bytes(obj.bit_length() // 8 + 1, "big", signed=True))
        return int(obj)  # IntEnum and other int subclasses keep their value, not their type
    # Subclasses of the built-in types are packed as their base type.
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, Mapping):  # dict subclasses included
        return dict(obj)
    if hasattr(obj, "model_dump"):  # a Pydantic model: rebuilt by get(model=...)
        return obj.model_dump(mode="python")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise SerializationError(f"cannot serialize a value of type {type(obj).__qualname__}")


def _from_msgpack(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack_nested(data))
    if code == _SET:
        return set(_unpack_nested(data))
    if code == _FROZENSET:
        return frozenset(_unpack_nested(data))
    if code == _DATETIME:
        return datetime.fromisoformat(data.decode())
    if code == _DATE:
        return date.fromisoformat(data.decode())
    if code == _TIME:
        return dtime.fromisoformat(data.decode())
    if code == _TIMEDELTA:
        days, seconds, microseconds = _unpack(data)
        return timedelta(days, seconds, microseconds)
    if code == _DECIMAL:
        return Decimal(data.decode())
    if code == _UUID:
        return uuid.UUID(bytes=bytes(data))
    if code == _BIGINT:
        return int(data)
    if code == _BIGINT_BYTES:
        return int.from_bytes(data, "big", signed=True)
    raise DecodeError(f"unknown msgpack extension type {code}")


UNPACK_OPTIONS = {"ext_hook": _from_msgpack, "raw": False, "strict_map_key": False}


def _unpack(data: Any) -> Any:
    return msgpack.unpackb(data, **UNPACK_OPTIONS)


def _unpack_nested(data: Any) -> Any:
    with _DECODING:
        return _unpack(data)


Compressor = tuple[Callable[[Any], bytes], Callable[[Any, int], bytes]]
"""(compress(data), decompress(data, limit)): decompress stops after limit + 1 bytes, so a
small value that would inflate to gigabytes (a decompression bomb) costs no more than that."""

MAX_VALUE_SIZE = 64 * 1024 * 1024  # the default of the max_value_size option (bytes)


def _zlib_decompress(data: Any, limit: int) -> bytes:
    return zlib.decompressobj().decompress(data, limit + 1)


def _compressors() -> dict[int, Compressor]:
    """Compression id -> (compress, decompress) for the libraries installed here."""
    found: dict[int, Compressor] = {ZLIB: (lambda data: zlib.compress(data, 1), _zlib_decompress)}
    try:
        import lz4.frame

        def lz4_decompress(data: Any, limit: int) -> bytes:
            out: bytes = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=limit + 1)
            return out

        found[LZ4] = (lz4.frame.compress, lz4_decompress)
    except ImportError:
        pass
    try:
        import zstandard

        def zstd_decompress(data: Any, limit: int) -> bytes:
            with zstandard.ZstdDecompressor().stream_reader(bytes(data)) as reader:
                out: bytes = reader.read(limit + 1)
                return out

        found[ZSTD] = (zstandard.ZstdCompressor().compress, zstd_decompress)
    except ImportError:
        pass
    return found


_COMPRESSION_NAMES = {"zlib": ZLIB, "lz4": LZ4, "zstd": ZSTD}


class Codec:
    """Turns values into the bytes stored in Redis and back (see the module docstring)."""

    def __init__(
        self,
        serializer: str = "msgpack",
        compression: str | None = "zlib",
        compress_threshold: int = 1024,
        secret: bytes | str | None = None,
        max_value_size: int = MAX_VALUE_SIZE,
    ) -> None:
        if serializer not in ("msgpack", "pickle"):
            raise ValueError(f"serializer must be 'msgpack' or 'pickle', got {serializer!r}")
        if serializer == "pickle":
            if not secret:
                raise ValueError("serializer='pickle' needs a secret: pickled values are HMAC-signed")
            self._secret = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._format = MSGPACK if serializer == "msgpack" else PICKLE
        self._compressors = _compressors()
        if compression is None:
            self._compression = NONE
        elif compression not in _COMPRESSION_NAMES:
            raise ValueError(f"compression must be None, 'zlib', 'lz4' or 'zstd', got {compression!r}")
        elif _COMPRESSION_NAMES[compression] not in self._compressors:
            raise ValueError(f"compression={compression!r} needs its package installed")
        else:
            self._compression = _COMPRESSION_NAMES[compression]
        if isinstance(compress_threshold, bool) or not isinstance(compress_threshold, int) or compress_threshold < 0:
            raise ValueError(f"compress_threshold must be a non-negative int, got {compress_threshold!r}")
        self._threshold = compress_threshold
        if isinstance(max_value_size, bool) or not isinstance(max_value_size, int) or max_value_size < 1:
            raise ValueError(f"max_value_size must be a positive int (bytes), got {max_value_size!r}")
        self._max_size = max_value_size

    def encode(
        self, value: Any, redis_key: bytes, ttl_ms: int | None, delta_ms: int | None = None, plain_ints: bool = True
    ) -> bytes:
        """Bytes for Redis; raises SerializationError (a TypeError) for what cannot be stored.
        With delta_ms (the load's duration; 0 if none), the extended header: see EXTENDED.
        An integer is stored as plain digits (no header: INCRBY works on it) unless plain_ints
        is false."""
        if plain_ints and type(value) is int and INT64_MIN <= value <= INT64_MAX:
            return b"%d" % value
        if self._format == MSGPACK:
            try:
                payload = _pack(value)
            except SerializationError:
                raise
            except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # too deep, or cyclic
                raise SerializationError(f"cannot serialize {type(value).__qualname__}: {exc}") from exc
        else:
            try:
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise SerializationError(f"cannot pickle {type(value).__qualname__}: {exc}") from exc
        if len(payload) > self._max_size:  # readers would refuse it: refuse it here
            raise SerializationError(
                f"{type(value).__qualname__} serializes to {len(payload)} bytes, over max_value_size ({self._max_size})"
            )
        flags = self._format
        if self._compression != NONE and len(payload) > self._threshold:
            payload = self._compressors[self._compression][0](payload)
            flags |= self._compression
        if delta_ms is None:
            header = HEADER.pack(flags, deadline_ms(ttl_ms))
        else:
            header = HEADER_EXT.pack(flags | EXTENDED, deadline_ms(ttl_ms), min(max(0, delta_ms), MAX_DELTA_MS))
        if self._format == PICKLE:
            return header + self._sign(redis_key, header, payload) + payload
        return header + payload

    def decode(self, data: bytes, redis_key: bytes) -> tuple[Any, int | None]:
        """(value, deadline in unix ms or 0) from Redis bytes; deadline None if the format
        carries none (plain integers). Raises DecodeError for anything malformed."""
        if not data:
            raise DecodeError("empty value")
        if data[0] == MSGPACK and len(data) >= HEADER.size:  # the common case, kept short
            try:
                return _unpack(data[HEADER.size :]), HEADER.unpack_from(data)[1]
            except Exception as exc:
                raise DecodeError(f"value does not decode: {exc}") from exc
        if data[0] in _DIGITS:
            try:
                return int(data), None
            except ValueError:
                raise DecodeError("value is neither a tiercache value nor an integer") from None
        size = HEADER_EXT.size if data[0] & EXTENDED else HEADER.size
        if len(data) < size:
            raise DecodeError("value shorter than the tiercache header")
        flags, deadline = HEADER.unpack_from(data)
        kind, compression = flags & SERIALIZER_MASK, flags & COMPRESSION_MASK
        view = memoryview(data)
        if kind == PICKLE:
            if self._format != PICKLE:
                raise DecodeError("pickled value found, but this cache has no pickle secret")
            signature = view[size : size + SIGNATURE_SIZE]
            payload = view[size + SIGNATURE_SIZE :]
            if not hmac.compare_digest(signature, self._sign(redis_key, view[:size], payload)):
                raise SignatureError("pickled value has a bad signature: not unpickled")
        elif kind == MSGPACK:
            payload = view[size:]
        else:
            raise DecodeError(f"unknown value format byte 0x{flags:02x}")
        try:
            if compression != NONE:
                if compression not in self._compressors:
                    raise DecodeError(f"value compressed with codec {compression}, not installed here")
                payload = memoryview(self._compressors[compression][1](payload, self._max_size))
                if len(payload) > self._max_size:
                    raise DecodeError(f"value inflates past max_value_size ({self._max_size} bytes): not decoded")
            value = pickle.loads(payload) if kind == PICKLE else _unpack(payload)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"value does not decode: {exc}") from exc
        return value, deadline

    def decode_batch(
        self, keys: list[Any], blobs: list[Any], redis_keys: list[bytes], found: dict[Any, Any], l1_ttl: float
    ) -> tuple[list[Fill], list[tuple[bytes, DecodeError]]]:
        """Decode an MGET reply: each value goes into found under its key (blobs[i] is the
        reply for keys[i], stored at redis_keys[i]; None is absent). Returns the L1 fills
        (plain integers carry no deadline and get none) and the (redis key, error) of every
        value that did not decode. The common format is decoded in one compiled loop."""
        now_ms = time.time() * 1000.0
        fills, slow = decode_reply(
            keys, blobs, found, msgpack.Unpacker, UNPACK_OPTIONS, MSGPACK, HEADER.size, now_ms, l1_ttl
        )
        errors: list[tuple[bytes, DecodeError]] = []
        for index in slow:  # other formats, and anything the compiled loop could not decode
            try:
                value, deadline = self.decode(blobs[index], redis_keys[index])
            except DecodeError as exc:
                errors.append((redis_keys[index], exc))
                continue
            extended = freshness(blobs[index]) if deadline else None
            if extended is not None and deadline <= now_ms:  # type: ignore[operator]
                continue  # past its logical expiry: a miss
            found[keys[index]] = value
            if extended is not None:
                fills.append((index, value, early_l1_ttl(extended[0], extended[1], now_ms, l1_ttl, EARLY_BETA)))
            elif deadline is not None:
                fills.append((index, value, ttl_until(deadline, l1_ttl, now_ms)))
        return fills, errors

    def _sign(self, redis_key: bytes, header: Any, payload: Any) -> bytes:
        # The deadline is left out so expire() can rewrite it without the secret; forging it
        # changes nothing but how long an L1 may hold the value (never past its own L1 ttl).
        mac = hmac.new(self._secret, redis_key, hashlib.sha256)
        mac.update(header[:1])
        mac.update(payload)
        return mac.digest()


EARLY_BETA: Final = 1.0  # XFetch's beta when early refresh is on without one given
WINDOW_L1_TTL: Final = 0.05  # s: the longest an L1 copy lives once inside its refresh margin


def refresh_margin_ms(delta_ms: int, beta: float) -> float:
    """How long before a value's expiry a reader refreshes it (core/freshness.py): XFetch's
    draw, delta * beta * -ln(random()), plus the load's own duration delta, so that the
    refresh lands before the value expires."""
    return delta_ms * (1.0 - beta * math.log(1.0 - random.random()))


def early_l1_ttl(deadline: int, delta_ms: int, now_ms: float, cap: float, beta: float) -> float:
    """How long an L1 copy of a value with the extended header may live: until a point a
    refresh margin before its expiry (at most WINDOW_L1_TTL once past it), so that readers
    come back to Redis in time for early refresh, whoever decoded it (get, get_many, a load)."""
    if not deadline:
        return cap
    left = (deadline - now_ms) / 1000.0
    # Never later than where refresh_early refreshes for certain (twice the load, and then some).
    margin = max(refresh_margin_ms(delta_ms, beta), 2 * delta_ms + WINDOW_L1_TTL * 1000.0)
    left = max(min(left, WINDOW_L1_TTL), left - margin / 1000.0)
    return min(cap, left)


def freshness(data: bytes) -> tuple[int, int] | None:
    """(logical deadline in unix ms or 0, last load's duration in ms) of a value written
    with the extended header; None for any other bytes."""
    if len(data) >= HEADER_EXT.size and data[0] & EXTENDED and data[0] in HEADER_FORMATS:
        _, deadline, delta = HEADER_EXT.unpack_from(data)
        return deadline, delta
    return None


def rebuild(value: Any, model: Any) -> Any:
    """Turn a decoded mapping back into a Pydantic model or a dataclass."""
    if model is None or isinstance(value, model):
        return value
    if hasattr(model, "model_validate"):
        return model.model_validate(value)
    if dataclasses.is_dataclass(model) and isinstance(model, type):
        return model(**value)
    raise TypeError(f"model must be a Pydantic model or a dataclass, got {model!r}")


def _escape(part: str) -> str:
    if "%" in part or ":" in part:
        return part.replace("%", "%25").replace(":", "%3A")
    return part


def _unescape(part: str) -> str:
    return part.replace("%3A", ":").replace("%25", "%")


# A key is written as it is unless it starts with one of these, which would read as a
# namespace segment ("@") or an escape ("%"); then its first character is escaped.
_KEY_MARKS = ("@", "%")


def check_key(key: Any) -> None:
    """Raise TypeError unless key is str or bytes."""
    if type(key) is not str and type(key) is not bytes:
        raise TypeError(f"cache keys must be str or bytes, got {type(key).__name__}")


class KeyCodec:
    """Maps (namespace path, key) to a Redis key and back, injectively.

    ``{prefix}:{name}:`` then ``@{segment}:`` for each namespace (prefix, name and segments
    escape ``%`` and ``:``), then the key as it is, so ``user:1`` in cache ``users`` is
    ``tc:users:user:1`` and in namespace ``t42`` is ``tc:users:@t42:user:1``. A str key that
    starts with ``@`` or ``%`` has that character escaped (``%40``, ``%25``); a bytes key
    is ``%B`` + hex. Keys need no other escaping, which keeps the common case one
    concatenation. So the namespace's prefix followed by ``%T``, ``%I`` or ``%D`` is free for
    its tag sets, and an empty segment (``@:``) for load leases.

    On Redis Cluster (sharded) a script may only touch keys of one hash slot, so the keys a
    script pairs with a key are put in that key's slot: a load lease is
    ``{prefix}:{name}:@:{TTT}`` then the key's rest, and a tag set and tag index are kept per
    slot (``%T{TTT}tag``, ``%I{TTT}``), where ``{TTT}`` is a hash tag of three letters or digits
    that Redis hashes to the key's slot (slot_tag). The key itself keeps its form, so a user's own hash
    tag in a key (``user:{42}:name``) groups keys as Redis users expect. The cache's prefix,
    name and namespaces then may not hold ``{`` or ``}``: the hash tag of a derived key must
    be the first one in it.
    """

    __slots__ = ("_base_bytes", "_cache_prefix", "base", "name", "path", "prefix", "sharded")

    def __init__(self, prefix: str, name: str, path: tuple[str, ...] = (), sharded: bool = False) -> None:
        for label, part in (("prefix", prefix), ("name", name)):
            if not isinstance(part, str) or not part:
                raise ValueError(f"{label} must be a non-empty str, got {part!r}")
            try:
                part.encode("utf-8")  # a metric label and a pub/sub channel: real text only
            except UnicodeEncodeError:
                raise ValueError(f"{label} must be valid text (no lone surrogates), got {part!r}") from None
        for label, part in (("prefix", prefix), ("name", name), *(("namespace", seg) for seg in path)):
            if sharded and ("{" in part or "}" in part):
                raise ValueError(
                    f"{label} {part!r} holds {{ or }}: on Redis Cluster these make a hash tag, which "
                    "tiercache's own keys need; put hash tags in keys instead"
                )
        self.prefix, self.name, self.path, self.sharded = prefix, name, path, sharded
        if sharded:
            slot_tag(0)  # the table of slot tags, made once (~0.1 s) when a cache is made, not mid-call
        self.base = _escape(prefix) + ":" + _escape(name) + ":" + "".join("@" + _escape(seg) + ":" for seg in path)
        self._base_bytes = self.base.encode("utf-8", "surrogatepass")
        self._cache_prefix = (_escape(prefix) + ":" + _escape(name) + ":").encode("utf-8", "surrogatepass")

    def child(self, segment: str) -> KeyCodec:
        """The codec of a nested namespace."""
        if not isinstance(segment, str) or not segment:
            raise ValueError(f"namespace must be a non-empty str, got {segment!r}")
        return KeyCodec(self.prefix, self.name, (*self.path, segment), self.sharded)

    @property
    def cache_prefix(self) -> bytes:
        """Every Redis key of this cache (all namespaces) starts with these bytes."""
        return self._cache_prefix

    @property
    def namespace_prefix(self) -> bytes:
        """Every Redis key of this namespace (and those nested in it) starts with these bytes."""
        return self._base_bytes

    def redis_key(self, key: Any) -> bytes:
        """The Redis key for key in this namespace; TypeError unless key is str or bytes."""
        if type(key) is str:
            text: str = key if key[:1] not in _KEY_MARKS else "%" + format(ord(key[0]), "02X") + key[1:]
            return (self.base + text).encode("utf-8", "surrogatepass")
        if type(key) is bytes:
            return self._base_bytes + b"%B" + key.hex().encode()
        raise TypeError(f"cache keys must be str or bytes, got {type(key).__name__}")

    def redis_keys(self, keys: list[Any]) -> list[bytes]:
        """redis_key for a batch (the common case done in one compiled loop)."""
        return encode_keys(self._base_bytes, keys, self.redis_key)

    def lease_key(self, redis_key: bytes) -> bytes:
        """Where the load lease of redis_key lives (core/lease.py): an empty namespace
        segment ("@:") after the cache's prefix, which no key or namespace can produce (on
        Cluster, then redis_key's slot tag)."""
        prefix = self._cache_prefix
        if self.sharded:
            return prefix + b"@:{" + slot_tag(key_slot(redis_key)) + b"}" + redis_key[len(prefix) :]
        return prefix + b"@:" + redis_key[len(prefix) :]

    def leased_key(self, lease_key: bytes) -> bytes | None:
        """The key whose load lease lease_key is (lease_key's inverse); None if it is none."""
        marked = self._cache_prefix + b"@:"
        if not lease_key.startswith(marked):
            return None
        rest = lease_key[len(marked) :]
        if self.sharded:
            if rest[:1] != b"{" or rest[4:5] != b"}":
                return None
            rest = rest[5:]
        return self._cache_prefix + rest

    def lease_glob(self) -> bytes:
        """A Redis glob (SCAN MATCH) of the load leases of this namespace's keys."""
        prefix = self._cache_prefix
        rest = glob_escape(self._base_bytes[len(prefix) :])
        return glob_escape(prefix) + (b"@:{???}" if self.sharded else b"@:") + rest

    def tag_key(self, tag: str, slot: int = 0) -> bytes:
        """The sorted set of this namespace's keys written with tag (core/tags.py): ``%T``
        after the namespace's prefix, which no key produces (a key's leading % is escaped);
        on Cluster, one per slot: the keys of that slot."""
        if self.sharded:
            return self._base_bytes + b"%T{" + slot_tag(slot) + b"}" + tag.encode("utf-8")
        return self._base_bytes + b"%T" + tag.encode("utf-8")

    def tag_index(self, slot: int = 0) -> bytes:
        """The sorted set of this namespace's tag sets (core/tags.py); on Cluster, of those
        of one slot."""
        if self.sharded:
            return self._base_bytes + b"%I{" + slot_tag(slot) + b"}"
        return self._base_bytes + b"%I"

    def tag_slots(self, tag: str) -> bytes:
        """On Cluster: the set of the slot tags under which tag has a tag set (core/tags.py)."""
        return self._base_bytes + b"%D" + tag.encode("utf-8")

    def matcher(self, pattern: bytes, path: tuple[str, ...]) -> Callable[[Any], bool]:
        """Whether an L1 key (a key, or (path, key) in a namespace) is one of namespace
        path's keys whose Redis key matches the Redis glob pattern."""
        regex = glob_regex(pattern)
        codecs: dict[tuple[str, ...], KeyCodec] = {}

        def matches(l1_key: Any) -> bool:
            key_path, key = l1_key if type(l1_key) is tuple else ((), l1_key)
            if key_path != path:
                return False
            codec = codecs.get(path)
            if codec is None:
                codec = codecs[path] = KeyCodec(self.prefix, self.name, path, self.sharded)
            return regex.fullmatch(codec.redis_key(key)) is not None

        return matches

    def parse(self, redis_key: bytes) -> tuple[tuple[str, ...], Any]:
        """(namespace path, key) for a Redis key of this cache; ValueError if it is not one."""
        prefix = self.cache_prefix
        if not redis_key.startswith(prefix):
            raise ValueError(f"{redis_key!r} is not a key of cache {self.name!r}")
        rest = redis_key[len(prefix) :].decode("utf-8", "surrogatepass")
        path = []
        while rest.startswith("@"):
            segment, _, rest = rest[1:].partition(":")
            if not segment:  # "@:": a lease, not a key
                raise ValueError(f"{redis_key!r} is a load lease, not a key")
            path.append(_unescape(segment))
        key: Any = rest
        if rest.startswith(("%T", "%I", "%D")):
            raise ValueError(f"{redis_key!r} is a tag set, not a key")
        if rest.startswith("%B"):
            key = bytes.fromhex(rest[2:])
        elif rest.startswith("%"):
            key = chr(int(rest[1:3], 16)) + rest[3:]
        return tuple(path), key


def glob_escape(prefix: bytes) -> bytes:
    """prefix with the characters SCAN MATCH treats specially escaped (backslash first)."""
    for char in (b"\\", b"*", b"?", b"[", b"]"):
        prefix = prefix.replace(char, b"\\" + char)
    return prefix


SLOTS: Final = 16384  # Redis Cluster's hash slots


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of key: CRC16 (XMODEM) of its hash tag, the bytes between
    its first { and the first } after it when there are any, else of all of it."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return binascii.crc_hqx(key, 0) % SLOTS


_TAG_CHARS: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@functools.cache
def _slot_tags() -> tuple[bytes, ...]:
    # Three letters or digits per slot (readable in a key listing, never a brace), the first
    # found in a fixed order: every slot is reached within the 238,328 there are.
    tags: list[bytes | None] = [None] * SLOTS
    left = SLOTS
    for first in _TAG_CHARS:
        for second in _TAG_CHARS:
            for third in _TAG_CHARS:
                tag = bytes((first, second, third))
                slot = binascii.crc_hqx(tag, 0) % SLOTS
                if tags[slot] is None:
                    tags[slot] = tag
                    left -= 1
                    if not left:
                        return tuple(tag for tag in tags if tag is not None)
    raise AssertionError("a slot without a three-letter hash tag")


def slot_tag(slot: int) -> bytes:
    """Three letters or digits that, as a hash tag ({...}), put a key in slot."""
    return _slot_tags()[slot]


def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """A regex matching exactly what Redis's glob (SCAN MATCH, KEYS: stringmatchlen in
    util.c) matches: * any run, ? one byte, [...] a class ([^...] negated; x-y a range
    whenever a byte follows the -, even ]; a class left open runs to the end), backslash
    escaping the next byte (a lone trailing one matches itself)."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == 0x5C:  # backslash
            if i + 1 < n:
                i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif char == 0x2A:  # *
            out.append(b".*")
        elif char == 0x3F:  # ?
            out.append(b".")
        elif char == 0x5B:  # [
            i += 1
            negate = i < n and pattern[i] == 0x5E
            if negate:
                i += 1
            members: list[bytes] = []
            while i < n and pattern[i] != 0x5D:
                if pattern[i] == 0x5C and i + 1 < n:
                    i += 1
                    members.append(re.escape(pattern[i : i + 1]))
                elif i + 2 < n and pattern[i + 1] == 0x2D:
                    low, high = sorted((pattern[i], pattern[i + 2]))
                    members.append(re.escape(bytes([low])) + b"-" + re.escape(bytes([high])))
                    i += 2
                else:
                    members.append(re.escape(pattern[i : i + 1]))
                i += 1
            body = b"".join(members)
            if body:
                out.append((b"[^" if negate else b"[") + body + b"]")
            else:  # [] matches nothing, [^] any byte
                out.append(b"." if negate else b"(?!)")
        else:
            out.append(re.escape(pattern[i : i + 1]))
        i += 1
    return re.compile(b"".join(out), re.DOTALL)
