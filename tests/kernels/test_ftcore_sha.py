"""RollingSha256: equals hashlib under any chunking; state saved in one flavour or process
restores in the other."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flavours import KERNELS


def test_empty_and_known_vectors(impl: types.ModuleType) -> None:
    h = impl.RollingSha256()
    assert h.hexdigest() == hashlib.sha256(b"").hexdigest()
    h.update(b"abc")
    # FIPS 180-2 appendix B.1
    assert h.hexdigest() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert h.length == 3
    h.update(bytearray(b"d"))
    h.update(memoryview(b"xxe")[2:])
    assert h.digest() == hashlib.sha256(b"abcde").digest()


def test_digest_does_not_consume(impl: types.ModuleType) -> None:
    h = impl.RollingSha256()
    h.update(b"a" * 100)
    first = h.digest()
    assert h.digest() == first
    h.update(b"b")
    assert h.digest() == hashlib.sha256(b"a" * 100 + b"b").digest()
    c = h.copy()
    c.update(b"c")
    assert h.digest() == hashlib.sha256(b"a" * 100 + b"b").digest()
    assert c.digest() == hashlib.sha256(b"a" * 100 + b"bc").digest()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=700), st.lists(st.integers(0, 700), max_size=8))
def test_any_chunking_and_cross_flavour_restore(data: bytes, cuts: list[int]) -> None:
    points = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    want = hashlib.sha256(data).digest()
    for src_name, src in KERNELS.items():
        for dst in KERNELS.values():
            h = src.RollingSha256()
            for a, b in itertools.pairwise(points):
                state = h.dumps()
                h = dst.RollingSha256.loads(state)  # save / restore at every cut
                assert h.dumps() == state, src_name
                h.update(data[a:b])
            assert h.digest() == want
            assert h.length == len(data)
    states = []
    for mod in KERNELS.values():
        h = mod.RollingSha256()
        h.update(data)
        states.append(h.dumps())
    assert states[0] == states[1]


def test_large_buffer_matches_hashlib(impl: types.ModuleType) -> None:
    data = os.urandom(3 << 20 if impl is KERNELS["cython"] else 70_000)
    h = impl.RollingSha256()
    h.update(memoryview(data)[:12345])
    h.update(memoryview(data)[12345:])
    assert h.digest() == hashlib.sha256(data).digest()


def test_restore_in_another_process(tmp_path: os.PathLike[str]) -> None:
    data = os.urandom(100_003)
    h = KERNELS["cython"].RollingSha256()
    h.update(data[:50_001])
    code = (
        "import sys, ftcore\n"
        "h = ftcore.RollingSha256.loads(sys.stdin.buffer.read())\n"
        f"h.update(open({str(tmp_path)!r} + '/rest', 'rb').read())\n"
        "print(h.hexdigest())\n"
    )
    with open(os.path.join(tmp_path, "rest"), "wb") as f:
        f.write(data[50_001:])
    out = subprocess.run(
        [sys.executable, "-c", code], input=h.dumps(), capture_output=True, check=True
    )
    assert out.stdout.decode().strip() == hashlib.sha256(data).hexdigest()


def test_loads_rejects_malformed(impl: types.ModuleType) -> None:
    h = impl.RollingSha256()
    h.update(b"x" * 70)  # 6 pending bytes
    good = h.dumps()
    assert impl.RollingSha256.loads(good).digest() == h.digest()
    bad_garbage = good[:-1] + b"\x01"  # non-zero byte after the pending block
    bad_magic = b"NOPE" + good[4:]
    bad_len = good[:36] + (1 << 62).to_bytes(8, "little") + good[44:]
    for bad in (b"", good[:-1], good + b"\0", bad_garbage, bad_magic, bad_len):
        with pytest.raises(ValueError):
            impl.RollingSha256.loads(bad)
