"""SparseFile: positional writes, holes, flush, truncate, and errors that are never silent."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest


def test_write_read_holes(impl: types.ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    with impl.SparseFile(path) as f:
        f.write(10, b"hello")
        f.write(0, bytearray(b"ab"))
        f.write(5, memoryview(b"--XY--")[2:4])
        assert f.size() == 15
        assert f.read(0, 15) == b"ab\0\0\0XY\0\0\0hello"
        assert f.read(12, 100) == b"llo"  # short at end of file
        assert f.read(100, 10) == b""
        buf = bytearray(4)
        assert f.readinto(9, buf) == 4 and buf == b"\0hel"
        f.write(3, b"")  # zero-length write is a no-op
        assert f.size() == 15
        f.flush()
        f.truncate(7)
        assert f.size() == 7 and f.read(0, 100) == b"ab\0\0\0XY"
    assert path.read_bytes() == b"ab\0\0\0XY"


def test_large_sparse_offset_is_sparse(impl: types.ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    with impl.SparseFile(path) as f:
        f.write(1 << 34, b"z")  # 16 GiB offset
        assert f.size() == (1 << 34) + 1
        assert f.read((1 << 34) - 2, 10) == b"\0\0z"
    assert os.stat(path).st_blocks * 512 < 1 << 20  # holes take no space


def test_closed_and_missing(impl: types.ModuleType, tmp_path: Path) -> None:
    f = impl.SparseFile(tmp_path / "data")
    assert not f.closed
    f.close()
    assert f.closed
    f.close()  # idempotent
    with pytest.raises(ValueError):
        f.write(0, b"x")
    with pytest.raises(ValueError):
        f.read(0, 1)
    with pytest.raises(FileNotFoundError) as exc:
        impl.SparseFile(tmp_path / "nope", create=False)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(OSError) as exc2:
        impl.SparseFile(tmp_path / "no" / "dir")
    assert exc2.value.errno == errno.ENOENT


def test_negative_offset_rejected(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.SparseFile(tmp_path / "data") as f:
        with pytest.raises((ValueError, OverflowError)):
            f.write(-1, b"x")
        with pytest.raises(ValueError):
            f.read(0, -1)


@pytest.mark.parametrize("flavour", ["_core", "_pure"])
def test_partial_write_raises_with_errno(flavour: str, tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel accept part of a write, then fail with EFBIG: the kernel
    # must loop over the short write and then raise, never return quietly.
    code = f"""
import resource, signal, sys
from ftcore import {flavour} as k
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
f = k.SparseFile(sys.argv[1])
try:
    f.write(0, b"x" * 250_000)
except OSError as e:
    print("errno", e.errno)
else:
    print("no error")
"""
    path = tmp_path / "data"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["errno", str(errno.EFBIG)]
    assert path.stat().st_size == 100_000
