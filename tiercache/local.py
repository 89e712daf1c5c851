"""Picks the L1 implementation: the compiled one unless told or unable to.

Set TIERCACHE_NO_EXTENSIONS=1 to force the pure-Python twin (the test suite runs once that
way). On interpreters other than CPython the pure twin is used.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

# What drop_echoes saw; the same numbers in both twins.
from ._local_py import ECHO_LOST, ECHO_NOTHING, ECHO_ONLY, ECHO_OTHER

NO_EXTENSIONS = bool(os.environ.get("TIERCACHE_NO_EXTENSIONS")) or (platform.python_implementation() != "CPython")

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _local_py as _chosen

    EXTENSION = False
else:
    try:
        from . import _local_c as _chosen  # type: ignore[no-redef]
    except ImportError:  # not built: the suite fails on this where a compiler exists
        from . import _local_py as _chosen  # type: ignore[no-redef]

        EXTENSION = False
    else:
        EXTENSION = True

# The same names from whichever was chosen (the pure twin's types, _local_c.pyi, describe both).
MISSING = _chosen.MISSING
Histogram = _chosen.Histogram
L1Gate = _chosen.L1Gate
LocalCache = _chosen.LocalCache
TieredFront = _chosen.TieredFront
decode_reply = _chosen.decode_reply
drop_echoes = _chosen.drop_echoes
echo_frame_length = _chosen.echo_frame_length
encode_keys = _chosen.encode_keys
fill_l1 = _chosen.fill_l1

__all__ = [
    "ECHO_LOST",
    "ECHO_NOTHING",
    "ECHO_ONLY",
    "ECHO_OTHER",
    "EXTENSION",
    "MISSING",
    "Histogram",
    "L1Gate",
    "LocalCache",
    "TieredFront",
    "decode_reply",
    "drop_echoes",
    "echo_frame_length",
    "encode_keys",
    "fill_l1",
]
