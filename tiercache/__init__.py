"""tiercache: a two-tier cache for Python services (compiled in-process L1, Redis L2)."""

from ._version import __version__
from .aio import AsyncTieredCache
from .base import Key
from .cache import TieredCache
from .core.plans import DELETED
from .errors import (
    CacheClosed,
    CacheError,
    CacheUnavailable,
    ConfigError,
    DecodeError,
    RedisReplyError,
    SerializationError,
    SignatureError,
)
from .local import EXTENSION, LocalCache

__all__ = [
    "DELETED",
    "EXTENSION",
    "AsyncTieredCache",
    "CacheClosed",
    "CacheError",
    "CacheUnavailable",
    "ConfigError",
    "DecodeError",
    "Key",
    "LocalCache",
    "RedisReplyError",
    "SerializationError",
    "SignatureError",
    "TieredCache",
    "__version__",
]
