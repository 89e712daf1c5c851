"""The compiled L1 must be what runs wherever it can be built."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig

import pytest

import tiercache
from tiercache import _local_py
from tiercache.local import NO_EXTENSIONS


def compiler_available() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None and importlib.util.find_spec("Cython") is not None


def test_selected_implementation_matches_the_switch():
    if NO_EXTENSIONS:
        assert os.environ.get("TIERCACHE_NO_EXTENSIONS")
        assert tiercache.EXTENSION is False
        assert tiercache.LocalCache is _local_py.LocalCache
    else:
        # Cython and a C compiler are here, so the pure fallback would be a broken build.
        assert compiler_available()
        assert tiercache.EXTENSION is True
        assert tiercache.LocalCache.__module__ == "tiercache._local_c"


@pytest.mark.skipif(NO_EXTENSIONS, reason="TIERCACHE_NO_EXTENSIONS is set")
def test_compiled_module_is_a_native_extension():
    from tiercache import _local_c

    assert _local_c.__file__.endswith(sysconfig.get_config_var("EXT_SUFFIX"))
    # A cdef class: no instance __dict__ and C-level counters.
    assert not hasattr(_local_c.LocalCache(), "__dict__")
    assert _local_c.LocalCache.get.__doc__.startswith("LocalCache.get(self, key, default=None)")
    # The metrics' histograms are the compiled ones too (observe is one C call, no lock).
    from tiercache.core.stats import TierStats

    assert type(TierStats().load_duration) is _local_c.Histogram
    assert type(_local_c.Histogram.observe).__name__ == "method_descriptor"
    # The subscriber's echo filter waits without the GIL only in the compiled module.
    from tiercache import cache, local

    assert local.drop_echoes is _local_c.drop_echoes is cache.drop_echoes
    assert type(_local_c.drop_echoes).__name__ == "builtin_function_or_method"
