"""The layout's rule, checked: the core is sans-I/O. Nothing in tiercache/core imports a
Redis client, asyncio, threads' I/O or a driver; the drivers import the core, never the
other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).parent.parent / "tiercache" / "core"
FORBIDDEN = ("redis", "socket", "asyncio", "tiercache.cache", "tiercache.aio", "tiercache.base")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a core module imports (relative imports resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module or "")
            else:
                base = ["tiercache", "core"][: 2 - (node.level - 1)]
                names.add(".".join([*base, *([node.module] if node.module else [])]))
    return names


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda path: path.name)
def test_the_core_does_no_io(path):
    bad = {
        name
        for name in imported_modules(path)
        for prefix in FORBIDDEN
        if name == prefix or name.startswith(prefix + ".")
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_check_sees_imports():
    # the resolution the test above relies on, on a file whose imports are known
    names = imported_modules(CORE / "shared.py")
    assert {"tiercache.codec", "tiercache.core.guard", "math"} <= names
