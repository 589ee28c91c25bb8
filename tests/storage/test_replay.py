"""One journal, one meaning: :func:`journal.replay`, the HTTP API's list of transfers in
progress and recovery (a store reopening the transfer) give the same ranges for the same
staged transfer.

Each case writes a staging directory by hand: the data file holds exactly the bytes the
journal claims, the journal is framed with the journal's record builders, and the expected
ranges are written out here from the records' meaning (docs: the module docstring of
``ftserver.storage.journal``), never read back from the code under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

import ftcore
from ftserver.storage import journal as jr
from ftserver.storage import listing
from ftserver.transfer.store import Transfer, TransferStore

from .retry import settle

CID = "dev/1"
FID = "file 1"
MTIME = 1_700_000_000
DATA = random.Random(7).randbytes(40_000)


def b3(offset: int, length: int) -> bytes:
    return blake3.blake3(DATA[offset : offset + length]).digest(length=16)


def staged(data_dir: Path) -> Path:
    """``staging/<SHA-1(clientId)[:2]>/<esc(clientId)>/<esc(fileId)>``, escaped by hand."""
    bucket = hashlib.sha1(CID.encode()).hexdigest()[:2].upper()
    return data_dir / "staging" / bucket / "dev%2F1" / "file 1"


def state_of(ranges: list[tuple[int, int]], tmp: Path) -> bytes:
    """A saved Assembler state holding ``ranges`` of DATA (made in a scratch file)."""
    with ftcore.Assembler(tmp / "scratch") as asm:
        for start, end in ranges:
            asm.place(start, DATA[start:end])
        state = asm.dumps()
    os.unlink(tmp / "scratch")
    return state


@dataclass
class Case:
    #: the journal's records (framed) and whatever follows them (a torn tail)
    records: list[bytes]
    tail: bytes
    #: the ranges of DATA the data file holds
    on_disk: list[tuple[int, int]]
    #: what every reader must find
    expected: list[tuple[int, int]]
    exporting: int | None = None


def cases(tmp: Path) -> dict[str, Case]:
    return {
        "ranges": Case(
            [
                jr.range_record(0, 10_000, b3(0, 10_000)),
                jr.range_record(20_000, 5000, b3(20_000, 5000)),
                jr.range_record(5000, 10_000, b3(5000, 10_000)),  # overlaps the first
            ],
            b"",
            [(0, 15_000), (20_000, 25_000)],
            [(0, 15_000), (20_000, 25_000)],
        ),
        "checkpoint": Case(
            [
                jr.range_record(0, 8000, b3(0, 8000)),  # covered by the checkpoint
                jr.range_record(12_000, 1000, b3(12_000, 1000)),  # written during its flush
                jr.checkpoint_record(state_of([(0, 8000)], tmp)),
                jr.range_record(8000, 2000, b3(8000, 2000)),
            ],
            b"",
            [(0, 10_000), (12_000, 13_000)],
            [(0, 10_000), (12_000, 13_000)],
        ),
        "synced-torn-tail": Case(
            [jr.range_record(0, 1000, None), jr.range_record(1000, 1000, None)],
            jr.range_record(2000, 1000, None)[:-3],  # a crash cut this one short
            [(0, 3000)],
            [(0, 2000)],
        ),
        "failed-export": Case(
            [
                jr.range_record(0, 30_000, None),
                jr.checkpoint_record(state_of([(0, 30_000)], tmp)),  # superseded by ...
                jr.exporting_record(20_000, "exports/x"),  # ... the cut at 20 000
                jr.range_record(25_000, 1000, b3(25_000, 1000)),  # a resend after it failed
            ],
            b"",
            [(0, 20_000), (25_000, 26_000)],
            [(0, 20_000), (25_000, 26_000)],
            exporting=20_000,
        ),
    }


def write_case(data_dir: Path, case: Case) -> Path:
    d = staged(data_dir)
    d.mkdir(parents=True)
    with open(d / "data", "wb") as f:
        for start, end in case.on_disk:
            f.seek(start)
            f.write(DATA[start:end])
    (d / "meta").write_bytes(json.dumps({"name": "n.bin", "size": len(DATA)}).encode())
    (d / "journal").write_bytes(jr.HEADER + b"".join(case.records) + case.tail)
    os.utime(d / "journal", (MTIME, MTIME))
    return d


async def recovered_ranges(data_dir: Path) -> list[tuple[int, int]]:
    store = TransferStore(data_dir)
    try:
        t = await settle(lambda: store.get(CID, FID))
        assert isinstance(t, Transfer)
        return list(t.asm.ranges)
    finally:
        await store.close()


@pytest.mark.parametrize("name", ["ranges", "checkpoint", "synced-torn-tail", "failed-export"])
def test_replay_listing_and_recovery_agree(tmp_path: Path, name: str) -> None:
    case = cases(tmp_path)[name]
    data_dir = tmp_path / "data"
    d = write_case(data_dir, case)
    covered = sum(end - start for start, end in case.expected)

    replay = jr.replay(d / "journal")
    assert replay.damaged is None
    assert list(replay.received) == case.expected
    assert replay.bytes_received == covered
    assert replay.last_activity == MTIME
    assert replay.exporting == case.exporting
    assert replay.valid_length == len(jr.HEADER) + sum(len(r) for r in case.records)

    [entry] = list(listing.iter_transfers(data_dir))
    assert (entry.client_id, entry.file_id, entry.name) == (CID, FID, "n.bin")
    assert entry.bytes_received == covered
    assert entry.last_activity == MTIME

    assert asyncio.run(recovered_ranges(data_dir)) == case.expected


def test_replay_of_checkpoint_and_records(tmp_path: Path) -> None:
    """The parts recovery builds on: the last checkpoint, the range records in order with
    their digests, nothing of what an EXPORTING record superseded."""
    state = state_of([(0, 50)], tmp_path)
    records = [
        jr.range_record(0, 100, None),
        jr.checkpoint_record(b"FTA1 an older one"),
        jr.exporting_record(100, "x"),
        jr.range_record(100, 10, b"d" * 16),
        jr.checkpoint_record(state),
        jr.range_record(200, 20, None),
    ]
    path = tmp_path / "journal"
    path.write_bytes(jr.HEADER + b"".join(records))
    replay = jr.replay(path)
    assert replay.checkpoint == state
    assert replay.ranges == (
        jr.RangeRec(100, 110, digest=b"d" * 16),
        jr.RangeRec(200, 220, synced=True),
    )
    assert replay.boot_id is None and replay.states == ()  # an older journal: no such records
    assert replay.exporting == 100
    # the checkpoint's ranges (not the exported prefix: the checkpoint is newer) and records
    assert list(replay.received) == [(0, 50), (100, 110), (200, 220)]


def test_unflushed_range_lost_is_claimed_but_not_recovered(tmp_path: Path) -> None:
    """A fast-mode range whose bytes a power cut lost: the journal claims it (the listing
    does not re-read data), recovery checks its BLAKE3 and drops it, so the client resends."""
    case = cases(tmp_path)["ranges"]
    data_dir = tmp_path / "data"
    d = write_case(data_dir, case)
    with open(d / "data", "r+b") as f:
        f.seek(20_100)
        f.write(b"\0" * 10)
    assert list(jr.replay(d / "journal").received) == case.expected
    assert asyncio.run(recovered_ranges(data_dir)) == [(0, 15_000)]


def test_damaged_journal(tmp_path: Path) -> None:
    """Not a journal: replay says so, the listing counts nothing received, recovery starts
    the transfer over."""
    data_dir = tmp_path / "data"
    d = write_case(data_dir, cases(tmp_path)["ranges"])
    (d / "journal").write_bytes(b"FTJ0\nnot a journal")
    os.utime(d / "journal", (MTIME, MTIME))
    replay = jr.replay(d / "journal")
    assert replay.damaged is not None and "header" in replay.damaged
    assert replay.bytes_received == 0 and replay.last_activity == MTIME
    [entry] = list(listing.iter_transfers(data_dir))
    assert entry.bytes_received == 0 and entry.name == "n.bin"

    async def reopen() -> None:
        store = TransferStore(data_dir)
        assert await settle(lambda: store.get(CID, FID)) is None
        await store.close()

    asyncio.run(reopen())
    assert not d.exists()
    with pytest.raises(FileNotFoundError):
        jr.replay(d / "journal")


def test_bad_checkpoint_falls_back_to_the_records(tmp_path: Path) -> None:
    """A checkpoint that is not a saved state counts for nothing, for every reader."""
    case = Case(
        [jr.range_record(0, 1000, b3(0, 1000)), jr.checkpoint_record(b"FTA1" + b"\0" * 30)],
        b"",
        [(0, 1000)],
        [(0, 1000)],
    )
    data_dir = tmp_path / "data"
    d = write_case(data_dir, case)
    assert list(jr.replay(d / "journal").received) == [(0, 1000)]
    assert [e.bytes_received for e in listing.iter_transfers(data_dir)] == [1000]
    assert asyncio.run(recovered_ranges(data_dir)) == [(0, 1000)]
