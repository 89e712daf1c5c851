"""Types of the compiled L1 (csrc/_local.pyx, built as tiercache._local_c).

The compiled module has exactly the API and types of its pure twin, tiercache/_local_py.py
(the hypothesis tests in tests/test_twins.py hold the two to identical behaviour), so its
types are the twin's: stated once, they cannot drift apart. (At run time the compiled
classes other than TieredFront are final: Cython does not let them be subclassed.)
"""

from ._local_py import MISSING as MISSING
from ._local_py import Histogram as Histogram
from ._local_py import L1Gate as L1Gate
from ._local_py import LocalCache as LocalCache
from ._local_py import TieredFront as TieredFront
from ._local_py import decode_reply as decode_reply
from ._local_py import drop_echoes as drop_echoes
from ._local_py import echo_frame_length as echo_frame_length
from ._local_py import encode_keys as encode_keys
from ._local_py import fill_l1 as fill_l1
