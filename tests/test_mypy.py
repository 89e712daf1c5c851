"""Users' type checkers see real types: mypy --strict accepts a service's strictly typed
code (tests/typing/user_code.py, with assert_type on what it infers) and rejects the
mistakes in tests/typing/user_mistakes.py, each where it is marked (multidict's test_mypy
does this)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tiercache.local import NO_EXTENSIONS

mypy_api = pytest.importorskip("mypy.api")

HERE = Path(__file__).parent / "typing"

pytestmark = pytest.mark.skipif(
    NO_EXTENSIONS, reason="types do not depend on the L1 build: checked once, in the compiled run"
)


def mypy(path: Path) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--no-error-summary", "--show-error-codes", "--python-version", "3.10", str(path)]
    )
    assert not stderr, stderr
    return stdout, status


def test_strictly_typed_user_code_passes():
    output, status = mypy(HERE / "user_code.py")
    assert status == 0, output


def test_mistakes_are_caught_where_they_are():
    path = HERE / "user_mistakes.py"
    output, status = mypy(path)
    assert status == 1
    expected = {number for number, line in enumerate(path.read_text().splitlines(), 1) if "# E:" in line}
    reported = {int(match) for match in re.findall(rf"{re.escape(path.name)}:(\d+): error", output)}
    assert reported == expected, output
