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

NO_EXTENSIONS = bool(os.environ.get("TIERCACHE_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._local_py import (
        MISSING,
        Histogram,
        L1Gate,
        LocalCache,
        TieredFront,
        decode_reply,
        drop_echoes,
        echo_frame_length,
        encode_keys,
        fill_l1,
    )

    EXTENSION = False
else:
    try:
        from ._local_c import (
            MISSING,
            Histogram,
            L1Gate,
            LocalCache,
            TieredFront,
            decode_reply,
            drop_echoes,
            echo_frame_length,
            encode_keys,
            fill_l1,
        )
    except ImportError:  # not built: the suite fails on this where a compiler exists
        from ._local_py import (
            MISSING,
            Histogram,
            L1Gate,
            LocalCache,
            TieredFront,
            decode_reply,
            drop_echoes,
            echo_frame_length,
            encode_keys,
            fill_l1,
        )

        EXTENSION = False
    else:
        EXTENSION = True

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
