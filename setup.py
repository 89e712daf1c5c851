"""Builds tiercache._local_c from csrc/_local.pyx (and the .pxi files it includes) and says
which build it made.

Metadata lives in pyproject.toml. Set TIERCACHE_NO_EXTENSIONS=1 to build the pure-Python
package on purpose; otherwise a failed compile fails the install, because a silent fallback
would hide a slow L1.
"""

import os
import sys

from setuptools import Extension, setup

NO_EXTENSIONS = bool(os.environ.get("TIERCACHE_NO_EXTENSIONS"))

ext_modules = []
if NO_EXTENSIONS:
    print("*** tiercache: TIERCACHE_NO_EXTENSIONS is set: building the pure-Python L1 only ***")
else:
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                "tiercache._local_c",
                ["csrc/_local.pyx"],
                include_dirs=["csrc"],
                # The include files are part of the module: editing one must rebuild it.
                depends=[
                    "csrc/_clock.h",
                    "csrc/_store.pxi",
                    "csrc/_front.pxi",
                    "csrc/_histogram.pxi",
                    "csrc/_batch.pxi",
                    "csrc/_echo.pxi",
                ],
                extra_compile_args=["-O3"],
            )
        ],
        compiler_directives={"language_level": 3, "embedsignature": True},
        quiet=True,
    )
    print("*** tiercache: building the compiled L1 (tiercache._local_c) ***", file=sys.stderr)

setup(ext_modules=ext_modules)
