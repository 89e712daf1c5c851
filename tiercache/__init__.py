"""tiercache: a two-tier cache for Python services (compiled in-process L1, Redis L2)."""

from .aio import AsyncTieredCache
from .cache import TieredCache
from .core import DELETED
from .errors import CacheError, CacheUnavailable, DecodeError, SerializationError, SignatureError
from .local import EXTENSION, LocalCache

__version__ = "0.1.0"

__all__ = [
    "DELETED",
    "EXTENSION",
    "AsyncTieredCache",
    "CacheError",
    "CacheUnavailable",
    "DecodeError",
    "LocalCache",
    "SerializationError",
    "SignatureError",
    "TieredCache",
    "__version__",
]
