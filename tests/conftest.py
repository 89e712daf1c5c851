"""Fixtures shared by the suite: both L1 implementations and a clock the tests can move."""

from __future__ import annotations

import pytest

from tiercache import _local_py
from tiercache.local import NO_EXTENSIONS

IMPLEMENTATIONS = [pytest.param(_local_py.LocalCache, id="py")]
if not NO_EXTENSIONS:
    # Imported unguarded: a missing build must fail the run, not skip the compiled half.
    from tiercache import _local_c

    IMPLEMENTATIONS.insert(0, pytest.param(_local_c.LocalCache, id="c"))


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    """The LocalCache class under test: compiled ("c") and pure ("py")."""
    return request.param


@pytest.fixture(params=[p for p in IMPLEMENTATIONS if p.id == "c"])
def compiled_impl(request):
    """The compiled LocalCache only, for guarantees the pure twin does not make."""
    return request.param


class FakeTimer:
    """A clock that only moves when told to (seconds, like time.monotonic)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()
