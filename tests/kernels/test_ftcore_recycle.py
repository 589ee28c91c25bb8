"""Assembler: page-cache recycling behind the hashed prefix, and resuming from a recorded hash
state without reading the file (what a restart after ``kill -9`` does), on both flavours."""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path

import pytest

import ftcore._pure
from flavours import KERNELS

CHUNK = 4096


@pytest.fixture
def small_chunks(impl: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Recycling in 4 KiB chunks instead of 8 MiB, so the pure twin's SHA-256 keeps up."""
    monkeypatch.setattr(impl, "RECYCLE_CHUNK", CHUNK)
    return impl


def upload(a: object, data: bytes, seg: int, base: int = 0) -> None:
    """Place ``data`` at ``base`` in segments of ``seg`` bytes, in order."""
    for off in range(0, len(data), seg):
        a.place(base + off, data[off : off + seg])  # type: ignore[attr-defined]


@pytest.mark.parametrize("recycle", [True, False])
def test_data_and_hash_intact(
    small_chunks: types.ModuleType, tmp_path: Path, recycle: bool
) -> None:
    data = os.urandom(CHUNK * 5 + 1000)
    with small_chunks.Assembler(tmp_path / "data", recycle=recycle) as a:
        assert a.recycle is recycle
        upload(a, data, 1000)
        # writeback started for the 5 whole chunks, the 4 before the last were dropped
        assert a.recycled == (CHUNK * 4 if recycle else 0)
        assert a.digest(len(data)) == hashlib.sha256(data).digest()
        # a rewrite of recycled bytes is still compared with the file (read back from disk)
        a.place(0, data[:100])
        assert a.hashed == len(data)
    assert (tmp_path / "data").read_bytes() == data


def test_switch_and_catch_up(small_chunks: types.ModuleType, tmp_path: Path) -> None:
    data = os.urandom(CHUNK * 3)
    with small_chunks.Assembler(tmp_path / "data") as a:
        upload(a, data, CHUNK)
        assert a.recycled == 0
        a.recycle = True
        a.recycle_behind()  # what the native path's caller does once per read
        assert a.recycled == CHUNK * 2
        assert a.digest(len(data)) == hashlib.sha256(data).digest()


def test_out_of_order_join_recycles_what_it_read(
    small_chunks: types.ModuleType, tmp_path: Path
) -> None:
    data = os.urandom(CHUNK * 4)
    with small_chunks.Assembler(tmp_path / "data", recycle=True) as a:
        a.place(CHUNK, data[CHUNK:])
        assert a.recycled == 0 and a.hashed == 0
        a.place(0, data[:CHUNK])  # joins: the rest is read back and hashed
        assert a.hashed == len(data) and a.recycled == CHUNK * 3
        assert a.digest(len(data)) == hashlib.sha256(data).digest()


class RecordingPageCache(ftcore._pure.PageCache):
    """The real calls, each recorded: (what, offset, length)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, int]] = []

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        self.calls.append(("writeback", offset, length))
        super().start_writeback(fd, offset, length)

    def drop(self, fd: int, offset: int, length: int) -> None:
        self.calls.append(("drop", offset, length))
        super().drop(fd, offset, length)


def test_pure_twin_calls_writeback_then_drop_a_chunk_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ftcore._pure, "RECYCLE_CHUNK", CHUNK)
    pc = RecordingPageCache()
    data = os.urandom(CHUNK * 4 + 10)
    with ftcore._pure.Assembler(tmp_path / "data", recycle=True, page_cache=pc) as a:
        upload(a, data[: CHUNK - 1], CHUNK - 1)
        assert pc.calls == []  # no chunk finished yet
        upload_from = CHUNK - 1
        a.place(upload_from, data[upload_from : CHUNK + 1])
        assert pc.calls == [("writeback", 0, CHUNK)]  # nothing behind it yet to drop
        a.place(CHUNK + 1, data[CHUNK + 1 :])  # three more chunks at once
        assert pc.calls == [
            ("writeback", 0, CHUNK),
            ("writeback", CHUNK, CHUNK),
            ("drop", 0, CHUNK),
            ("writeback", 2 * CHUNK, CHUNK),
            ("drop", CHUNK, CHUNK),
            ("writeback", 3 * CHUNK, CHUNK),
            ("drop", 2 * CHUNK, CHUNK),
        ]
        assert a.digest(len(data)) == hashlib.sha256(data).digest()
    off = RecordingPageCache()
    with ftcore._pure.Assembler(tmp_path / "other", page_cache=off) as a:
        upload(a, data, CHUNK)
        a.recycle_behind()
    assert off.calls == []


def test_resume_from_recorded_hash_state_reads_nothing(
    impl: types.ModuleType, tmp_path: Path
) -> None:
    """Checkpoint, then ranges and the hash state as the journal records them: a restart
    rebuilds the assembler from those without reading a byte of the file."""
    data = os.urandom(50_000)
    with impl.Assembler(tmp_path / "data") as a:
        upload(a, data[:10_000], 1000)
        checkpoint = a.dumps()
        upload(a, data[10_000:30_000], 1000, base=10_000)
        a.place(40_000, data[40_000:45_000])  # out of order, beyond the prefix
        state = a.hash_state()
        assert len(state) == len(impl.RollingSha256().dumps())
    # the prefix's bytes on disk are zeroed: the digest comes out right only if the resumed
    # assembler never reads them (it takes the recorded state instead)
    with open(tmp_path / "data", "r+b") as f:
        f.write(bytes(30_000))
    with impl.Assembler(tmp_path / "data", checkpoint) as b:
        b.mark(10_000, 20_000, absorb=False)
        b.mark(40_000, 5_000, absorb=False)
        assert b.hashed == 10_000 and b.prefix == 30_000
        b.adopt_hash(state)
        assert b.hashed == 30_000 and b.catch_up() == 0
        b.place(30_000, data[30_000:40_000])  # joins 40_000..45_000: those are read back
        b.place(45_000, data[45_000:])
        assert b.hashed == len(data)
        assert b.digest(len(data)) == hashlib.sha256(data).digest()


def test_adopt_hash_checks_its_state(impl: types.ModuleType, tmp_path: Path) -> None:
    data = os.urandom(5000)
    with impl.Assembler(tmp_path / "data") as a:
        upload(a, data, 1000)
        state = a.hash_state()
    with impl.Assembler(tmp_path / "data") as b:
        b.mark(0, 4000, absorb=False)
        with pytest.raises(ValueError):
            b.adopt_hash(state)  # 5000 bytes hashed, only 4000 present
        with pytest.raises(ValueError):
            b.adopt_hash(b"garbage")
        b.mark(4000, 1000, absorb=False)
        assert b.hashed == 0 and b.catch_up() == 5000
        assert b.hash_state() == state
    # the state is the same in both flavours
    other = KERNELS["python" if impl is KERNELS["cython"] else "cython"]
    with other.Assembler(tmp_path / "data") as c:
        c.mark(0, 5000, absorb=False)
        c.adopt_hash(state)
        assert c.digest(5000) == hashlib.sha256(data).digest()
