"""What tiercache raises. Everything is a CacheError, so one except clause catches it all."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error tiercache raises."""


class CacheUnavailable(CacheError):
    """Redis could not be reached (only raised by writes with strict=True, or reads with
    raise_on_error=True; by default reads degrade and writes return False)."""


class RedisReplyError(CacheError):
    """Redis answered a command with an error reply (a key of another type, out of memory, a
    read-only replica); the client's exception is the __cause__."""


class CacheClosed(CacheError):
    """The cache was closed: it serves nothing, from L1 or Redis."""


class SerializationError(CacheError, TypeError):
    """A value the codec cannot encode; raised by set before anything is written."""


class DecodeError(CacheError, ValueError):
    """Bytes under one of our keys that do not decode; reads count them as a miss."""


class SignatureError(DecodeError):
    """A pickled value whose HMAC does not match: never unpickled, counted as a miss."""


class ConfigError(CacheError, ValueError):
    """A configuration that cannot make a cache (from_config, from_env, from_config_file):
    names the field and what it accepts."""
