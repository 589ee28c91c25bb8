"""Assembler: the file, its coverage and its rolling hash under any segment order, on both
flavours, with save/restore (a restart) in between and across flavours."""

from __future__ import annotations

import hashlib
import os
import random
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flavours import KERNELS


def segments_of(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(off, data[off : off + size]) for off in range(0, len(data), size)]


def test_in_order_upload_hashes_from_memory(impl: types.ModuleType, tmp_path: Path) -> None:
    data = os.urandom(200_000 if impl is KERNELS["cython"] else 20_000)
    with impl.Assembler(tmp_path / "data") as a:
        for off, seg in segments_of(data, 4096):
            assert a.place(off, seg) == len(seg)
            assert a.hashed == a.prefix == off + len(seg)
        assert a.complete(len(data)) and not a.complete(len(data) + 1)
        assert a.digest(len(data)) == hashlib.sha256(data).digest()
    assert (tmp_path / "data").read_bytes() == data


def test_reverse_order_reads_back_on_join(impl: types.ModuleType, tmp_path: Path) -> None:
    data = os.urandom(9000)
    with impl.Assembler(tmp_path / "data") as a:
        for off, seg in reversed(segments_of(data, 1000)):
            a.place(off, seg)
            assert a.hashed == a.prefix
        assert a.hashed == len(data)  # the last place (offset 0) joined everything
        assert a.digest(len(data)) == hashlib.sha256(data).digest()


def test_gaps_and_incomplete_digest(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.Assembler(tmp_path / "data") as a:
        a.place(0, b"a" * 100)
        a.place(150, b"b" * 50)
        assert a.gaps(300) == [(100, 150), (200, 300)]
        assert not a.complete(200)
        with pytest.raises(ValueError):
            a.digest(200)
        assert a.digest(100) == hashlib.sha256(b"a" * 100).digest()


def test_overlap_rewriting_hashed_bytes(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.Assembler(tmp_path / "data") as a:
        a.place(0, b"a" * 100)
        a.place(50, b"a" * 50)  # identical retransmission: hash stays valid
        assert a.hashed == 100
        a.place(40, b"b" * 20)  # different bytes: last write wins, hash restarts
        assert a.hashed == 0
        want = b"a" * 40 + b"b" * 20 + b"a" * 40
        assert a.digest(100) == hashlib.sha256(want).digest()
        assert a.hashed == 100
        a.place(100, b"c")  # in sync again: continues from memory
        assert a.hashed == 101


def test_bytes_beyond_size_are_not_hashed(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.Assembler(tmp_path / "data") as a:
        a.place(0, b"0123456789")
        assert a.digest(6) == hashlib.sha256(b"012345").digest()
        a.truncate(6)
        assert a.file.size() == 6 and list(a.ranges) == [(0, 6)]
        assert a.digest(6) == hashlib.sha256(b"012345").digest()
        assert a.digest(0) == hashlib.sha256(b"").digest()


def test_zero_length_segment_is_noop(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.Assembler(tmp_path / "data") as a:
        assert a.place(5, b"") == 0
        assert a.covered == 0 and a.file.size() == 0
        assert a.complete(0)


def test_state_rejects_inconsistency(impl: types.ModuleType, tmp_path: Path) -> None:
    with impl.Assembler(tmp_path / "data") as a:
        a.place(0, b"x" * 100)
        state = a.dumps()
    with impl.Assembler(tmp_path / "data", state) as b:
        assert b.hashed == 100 and b.digest(100) == hashlib.sha256(b"x" * 100).digest()
    other = impl.Assembler(tmp_path / "other")
    other.place(0, b"x" * 10)
    # hash from one state, ranges claiming less than was hashed
    head = state[: 16 + 108]  # header (hashed = 100) and hash state
    with pytest.raises(ValueError):
        impl.Assembler(tmp_path / "data", head + other.ranges.dumps())
    other.close()
    for bad in (b"", state[:10], b"XXXX" + state[4:]):
        with pytest.raises(ValueError):
            impl.Assembler(tmp_path / "data", bad)


def test_saved_ranges_without_a_file(impl: types.ModuleType, tmp_path: Path) -> None:
    """A journal reader gets the ranges of a saved state from either flavour, without the
    data file (which it must not open) and without trusting a damaged state."""
    with impl.Assembler(tmp_path / "data") as a:
        a.place(150, b"b" * 50)
        a.place(0, b"a" * 100)
        a.place(1000, b"c" * 24)
        state = a.dumps()
    os.unlink(tmp_path / "data")
    for reader in KERNELS.values():
        got = reader.Assembler.saved_ranges(state)
        assert list(got) == [(0, 100), (150, 200), (1000, 1024)]
        assert got.covered == 174
        assert list(reader.Assembler.saved_ranges(memoryview(bytearray(state)))) == list(got)
    assert not (tmp_path / "data").exists()
    with impl.Assembler(tmp_path / "empty") as e:
        assert list(impl.Assembler.saved_ranges(e.dumps())) == []
    hlen = int.from_bytes(state[12:16], "little")
    for bad in (
        b"",
        state[:10],  # a header cut short
        b"XXXX" + state[4:],  # another magic
        state[: 16 + hlen - 1],  # the hash state cut short
        state[:-1],  # the ranges cut short
        state[: 16 + hlen] + b"FTR1" + bytes(8) + b"x",  # ranges with trailing garbage
    ):
        with pytest.raises(ValueError):
            impl.Assembler.saved_ranges(bad)


def test_file_shorter_than_ranges_is_an_error(impl: types.ModuleType, tmp_path: Path) -> None:
    a = impl.Assembler(tmp_path / "data")
    a.place(100, b"y" * 100)
    state = a.dumps()
    a.close()
    os.truncate(tmp_path / "data", 150)  # the disk lost data the journal claims
    b = impl.Assembler(tmp_path / "data", state)
    with pytest.raises(OSError):
        b.place(0, b"z" * 100)
    b.close()


@settings(max_examples=120, deadline=None)
@given(
    size=st.integers(0, 3000),
    seg=st.integers(1, 700),
    seed=st.integers(0, 2**32),
    restart_at=st.integers(0, 40),
    extra=st.lists(st.tuples(st.integers(0, 3200), st.integers(0, 300)), max_size=6),
)
def test_random_orders_overlaps_and_restarts(
    size: int,
    seg: int,
    seed: int,
    restart_at: int,
    extra: list[tuple[int, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(size)
    plan = segments_of(data, seg)
    plan += [plan[rng.randrange(len(plan))] for _ in range(len(plan) // 3)] if plan else []
    rng.shuffle(plan)
    # overlapping rewrites with different bytes: last write wins, the model tracks it
    model = bytearray(data)
    writes: list[tuple[int, bytes]] = []
    for k, (off, chunk) in enumerate(plan):
        writes.append((off, chunk))
        if extra and k == len(plan) // 2:
            for eo, el in extra:
                junk = rng.randbytes(el)
                writes.append((eo, junk))
    for off, chunk in writes:
        end = off + len(chunk)
        if end > len(model):
            model.extend(bytes(end - len(model)))
        model[off:end] = chunk
    tmp = tmp_path_factory.mktemp("asm")
    names = list(KERNELS)
    asms = {n: KERNELS[n].Assembler(tmp / n) for n in names}
    present = bytearray(len(model))
    for k, (off, chunk) in enumerate(writes):
        if k == restart_at:  # a restart: save, close, reload into the other flavour
            states = {n: a.dumps() for n, a in asms.items()}
            assert states["cython"] == states["python"]
            for n in names:
                asms[n].close()
            asms = {
                n: KERNELS[other].Assembler(tmp / n, states[n])
                for n, other in zip(names, reversed(names), strict=True)
            }
        want_new = sum(1 for p in range(off, off + len(chunk)) if not present[p])
        present[off : off + len(chunk)] = b"\x01" * len(chunk)
        for a in asms.values():
            assert a.place(off, chunk) == want_new
            assert a.hashed <= a.prefix
    for n, a in asms.items():
        assert a.covered == sum(present)
        assert a.complete(size) == (all(present[:size]) and len(present) >= size)
        if a.complete(size):
            assert a.digest(size) == hashlib.sha256(bytes(model[:size])).digest(), n
            assert a.file.read(0, size) == bytes(model[:size])
        else:
            assert a.gaps(size)
        a.close()


def test_mark_records_bytes_already_in_the_file(impl: types.ModuleType, tmp_path: Path) -> None:
    # recovery: the journal says which ranges are in the file; mark() trusts it and hashes
    data = os.urandom(5000)
    (tmp_path / "data").write_bytes(data)
    with impl.Assembler(tmp_path / "data") as a:
        assert a.mark(1000, 2000) == 2000
        assert a.hashed == 0 and a.prefix == 0
        assert a.mark(0, 1000) == 1000
        assert a.hashed == a.prefix == 3000  # joined: read back and hashed
        assert a.mark(2500, 0) == 0
        assert a.place(3000, data[3000:]) == 2000
        assert a.digest(5000) == hashlib.sha256(data).digest()
        with pytest.raises(ValueError):
            a.mark(0, -1)
