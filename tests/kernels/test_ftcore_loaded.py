"""The compiled kernels are what `import ftcore` gives (aiohttp's habit: fail if C did not load)."""

from __future__ import annotations

import os
import subprocess
import sys

import ftcore
import ftcore._core


def test_compiled_module_is_loaded() -> None:
    assert ftcore.IMPLEMENTATION == "cython"
    assert ftcore.Assembler is ftcore._core.Assembler
    assert ftcore.RangeSet is ftcore._core.RangeSet
    assert ftcore._core.__file__ is not None
    assert ftcore._core.__file__.endswith(".so"), ftcore._core.__file__


def test_debug_build_when_expected() -> None:
    # CI runs the kernel tests a second time against a FTCORE_DEBUG=1 build and sets this.
    expected = os.environ.get("FTCORE_EXPECT_DEBUG", "0") == "1"
    assert ftcore.DEBUG is expected


def test_pure_twins_only_on_request() -> None:
    code = "import ftcore; print(ftcore.IMPLEMENTATION, ftcore.RangeSet.__module__)"
    env = dict(os.environ, FTCORE_PURE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["python", "ftcore._pure"]
    env.pop("FTCORE_PURE")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["cython", "ftcore._core"]
