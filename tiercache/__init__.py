"""tiercache: a two-tier cache for Python services (compiled in-process L1, Redis L2)."""

from .local import EXTENSION, LocalCache

__version__ = "0.1.0"

__all__ = ["EXTENSION", "LocalCache", "__version__"]
