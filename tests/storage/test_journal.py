"""The per-transfer journal: framing, torn tails, corruption, truncation, compaction.

Expected bytes are built here by hand (struct + zlib) from the format in the module's
docstring, never with the functions under test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftserver.storage import journal as jr

HEADER = b"FTJ1\n"


def by_hand(rtype: int, payload: bytes) -> bytes:
    """One framed record, built from the documented format."""
    head = struct.pack("<BI", rtype, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(head + payload))


BOOT = "0b6e5c2a-4a40-4d3e-9a39-5d3b8f0a9c11"


def opened(boot: str = BOOT, pid: int | None = None) -> bytes:
    """The ``OPENED`` record a process writes, by hand."""
    return by_hand(6, struct.pack("<I", os.getpid() if pid is None else pid) + boot.encode())


def quiet(path: Path, **kw: object) -> jr.Journal:
    """A journal opened without its ``OPENED`` record (the framing tests count bytes)."""
    return jr.Journal(path, boot_id=BOOT, announce=False, **kw)  # type: ignore[arg-type]


def dirty(j: jr.Journal) -> bool:
    """``j.dirty``, read afresh (mypy would otherwise keep it narrowed across calls)."""
    return j.dirty


def sample_records() -> list[tuple[int, bytes]]:
    digest = bytes(range(16))
    state = b"FTA1" + b"\x01" * 40
    return [
        (1, struct.pack("<QQ16s", 0, 4096, digest)),
        (2, struct.pack("<QQ", 4096, 100)),
        (3, state),
        (1, struct.pack("<QQ16s", (1 << 40) + 7, 1, b"\xff" * 16)),
        (4, struct.pack("<Q", 12345) + "exports/ab/cd/x/é/f".encode()),
    ]


def sample_journal() -> tuple[bytes, list[int]]:
    """A journal and the offsets where each record ends."""
    data = HEADER
    ends = []
    for rtype, payload in sample_records():
        data += by_hand(rtype, payload)
        ends.append(len(data))
    return data, ends


# -- framing -----------------------------------------------------------------------------


def test_frame_matches_documented_format() -> None:
    for rtype, payload in sample_records():
        assert jr.frame(jr.Rec(rtype), payload) == by_hand(rtype, payload)


def test_record_builders_match_documented_format() -> None:
    digest = bytes(range(100, 116))
    assert jr.range_record(10, 20, digest) == by_hand(1, struct.pack("<QQ16s", 10, 20, digest))
    assert jr.range_record(10, 20, None) == by_hand(2, struct.pack("<QQ", 10, 20))
    assert jr.checkpoint_record(b"state") == by_hand(3, b"state")
    assert jr.exporting_record(99, "a/b/ü") == by_hand(4, struct.pack("<Q", 99) + "a/b/ü".encode())


def test_parse_round_trip() -> None:
    data, ends = sample_journal()
    records, valid = jr.parse(data)
    assert valid == len(data) == ends[-1]
    assert [(int(r.type), r.payload) for r in records] == sample_records()
    assert records[0].range() == (0, 4096, bytes(range(16)))
    assert records[1].range() == (4096, 100, None)
    assert records[3].range() == ((1 << 40) + 7, 1, b"\xff" * 16)
    assert records[4].exporting() == (12345, "exports/ab/cd/x/é/f")
    assert list(jr.iter_ranges(records)) == [  # the older records read as RUNs
        jr.RangeRec(0, 4096, digest=bytes(range(16))),
        jr.RangeRec(4096, 4196, synced=True),
        jr.RangeRec((1 << 40) + 7, (1 << 40) + 8, digest=b"\xff" * 16),
    ]


def test_parse_header_only_and_empty_payload() -> None:
    assert jr.parse(HEADER) == ([], len(HEADER))
    records, valid = jr.parse(HEADER + by_hand(3, b""))
    assert valid == len(HEADER) + 9
    assert [(r.type, r.payload) for r in records] == [(jr.Rec.CHECKPOINT, b"")]


def test_exporting_target_not_utf8_round_trips() -> None:
    target = os.fsdecode(b"exports/\xff\xfe/name")  # surrogateescape'd bytes
    records, _ = jr.parse(HEADER + jr.exporting_record(7, target))
    assert records[0].exporting() == (7, target)


@pytest.mark.parametrize("header", [b"", b"FTJ", b"FTJ1", b"FTJ2\n", b"XXXXX", b"\nFTJ1\n"])
def test_bad_header_raises(header: bytes, tmp_path: Path) -> None:
    body = by_hand(2, struct.pack("<QQ", 0, 1))
    with pytest.raises(ValueError):
        jr.parse(header + body)
    path = tmp_path / "journal"
    path.write_bytes(header + body)
    with pytest.raises(ValueError):
        jr.read_journal(path)


# -- torn tails and corruption -------------------------------------------------------------


def test_torn_tail_at_every_cut_of_last_record() -> None:
    data, ends = sample_journal()
    start_of_last = ends[-2]
    want = [(int(r), p) for r, p in sample_records()[:-1]]
    for cut in range(start_of_last, len(data)):
        records, valid = jr.parse(data[:cut])
        assert valid == start_of_last, cut
        assert [(int(r.type), r.payload) for r in records] == want, cut


def test_torn_tail_at_every_cut_of_whole_journal() -> None:
    data, ends = sample_journal()
    for cut in range(len(HEADER), len(data) + 1):
        records, valid = jr.parse(data[:cut])
        complete = [e for e in ends if e <= cut]
        assert len(records) == len(complete), cut
        assert valid == (complete[-1] if complete else len(HEADER)), cut


def test_flipped_bit_anywhere_in_a_record_stops_there() -> None:
    data, ends = sample_journal()
    first = sample_records()[:2]
    lo, hi = ends[1], ends[2]  # the third record (a checkpoint)
    for pos in range(lo, hi):
        for bit in range(8):
            bad = bytearray(data)
            bad[pos] ^= 1 << bit
            records, valid = jr.parse(bytes(bad))
            assert valid == lo, (pos, bit)
            assert [(int(r.type), r.payload) for r in records] == first, (pos, bit)


def test_flipped_bit_in_every_record_of_a_small_journal() -> None:
    data, ends = sample_journal()
    starts = [len(HEADER), *ends[:-1]]
    for index, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        for pos in range(lo, hi, 3):
            bad = bytearray(data)
            bad[pos] ^= 0x10
            records, valid = jr.parse(bytes(bad))
            assert (len(records), valid) == (index, lo), (index, pos)


def test_unknown_type_with_good_crc_stops() -> None:
    good = by_hand(2, struct.pack("<QQ", 0, 10))
    records, valid = jr.parse(HEADER + good + by_hand(9, b"x") + good)
    assert len(records) == 1 and valid == len(HEADER) + len(good)


@pytest.mark.parametrize(
    ("rtype", "payload"),
    [
        (1, struct.pack("<QQ", 0, 10)),  # RANGE without its digest
        (1, struct.pack("<QQ16s", 0, 10, b"x" * 16) + b"!"),
        (2, struct.pack("<QQ16s", 0, 10, b"x" * 16)),  # RANGE_SYNCED with a digest
        (2, b"short"),
        (4, b"1234567"),  # EXPORTING shorter than its size field
    ],
)
def test_record_of_wrong_shape_stops(rtype: int, payload: bytes) -> None:
    good = by_hand(2, struct.pack("<QQ", 0, 10))
    records, valid = jr.parse(HEADER + good + by_hand(rtype, payload) + good)
    assert len(records) == 1 and valid == len(HEADER) + len(good)


def test_absurd_length_stops_without_reading_it() -> None:
    head = struct.pack("<BI", 3, jr.MAX_RECORD + 1)
    records, valid = jr.parse(HEADER + head + b"\0" * 64)
    assert records == [] and valid == len(HEADER)


# -- the Journal file object ---------------------------------------------------------------


def test_new_journal_has_header_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        assert path.read_bytes() == HEADER and j.size == len(HEADER)
        assert not dirty(j)
        r1 = jr.range_record(0, 5, b"a" * 16)
        r2 = jr.range_record(5, 5, None)
        j.add(r1)
        j.add(r2)
        assert dirty(j)
        assert path.read_bytes() == HEADER  # buffered, not written
        j.write()
        assert not dirty(j)
        assert path.read_bytes() == HEADER + r1 + r2
        assert j.size == len(HEADER + r1 + r2)
        j.write()  # nothing pending: no-op
        assert path.read_bytes() == HEADER + r1 + r2
        j.sync()
    finally:
        j.close()
    j.close()  # idempotent
    # reopening appends after what is there, no second header
    j = quiet(path)
    try:
        assert j.size == len(HEADER + r1 + r2)
        j.add(jr.checkpoint_record(b"cp"))
        j.write()
    finally:
        j.close()
    assert path.read_bytes() == HEADER + r1 + r2 + by_hand(3, b"cp")


def test_take_removes_buffered_records(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        r1 = jr.range_record(0, 1, None)
        r2 = jr.range_record(1, 1, None)
        j.add(r1)
        j.add(r2)
        assert j.take() == [r1, r2]
        assert not dirty(j) and j.take() == []
        j.write()
        assert path.read_bytes() == HEADER and j.size == len(HEADER)
        # what was taken can be written later, after newer records
        r3 = jr.range_record(2, 1, None)
        j.add(r3)
        j.write()
        for r in (r1, r2):
            j.add(r)
        j.write()
    finally:
        j.close()
    assert path.read_bytes() == HEADER + r3 + r1 + r2


def test_valid_length_cuts_torn_tail_and_appends_after_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    data, _ = sample_journal()
    torn = data + by_hand(2, struct.pack("<QQ", 1, 2))[:-3]  # crash mid-record
    path.write_bytes(torn)
    records, valid = jr.read_journal(path)
    assert valid == len(data) and len(records) == 5
    j = quiet(path, valid_length=valid)
    try:
        assert os.path.getsize(path) == len(data) == j.size
        extra = jr.range_record(777, 3, b"z" * 16)
        j.add(extra)
        j.write()
        assert j.size == len(data) + len(extra)
    finally:
        j.close()
    assert path.read_bytes() == data + extra
    records, valid = jr.read_journal(path)
    assert valid == len(data) + len(extra)
    assert records[-1].range() == (777, 3, b"z" * 16)


def test_valid_length_after_corrupted_record_drops_everything_after_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    data, ends = sample_journal()
    bad = bytearray(data)
    bad[ends[0] + 7] ^= 1  # inside the second record
    path.write_bytes(bytes(bad))
    records, valid = jr.read_journal(path)
    assert valid == ends[0] and len(records) == 1
    j = quiet(path, valid_length=valid)
    try:
        j.add(jr.range_record(1, 1, None))
        j.write()
    finally:
        j.close()
    records, valid = jr.read_journal(path)
    assert [r.range() for r in records] == [(0, 4096, bytes(range(16))), (1, 1, None)]
    assert valid == os.path.getsize(path)


def test_valid_length_not_shorter_than_file_keeps_file(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    data, _ = sample_journal()
    path.write_bytes(data)
    quiet(path, valid_length=len(data)).close()
    assert path.read_bytes() == data


def test_missing_journal_with_valid_length_zero_is_created(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    quiet(path, valid_length=0).close()
    assert path.read_bytes() == HEADER


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        for i in range(50):
            j.add(jr.range_record(i * 10, 10, bytes([i]) * 16))
        j.write()
        pending = jr.range_record(500, 10, None)
        j.add(pending)  # buffered when the rewrite starts: stays buffered (sync: not flushed)
        old_ino = os.stat(path).st_ino
        with open(path, "rb") as reader:  # a reader of the old file keeps seeing it whole
            keep = [jr.checkpoint_record(b"state"), jr.range_record(1000, 5, b"k" * 16)]
            j.rewrite(keep)
            old = reader.read()
        assert dirty(j) and j.take() == [pending]
        assert jr.parse(old)[1] == len(old)
        assert len(jr.parse(old)[0]) == 50
        assert os.stat(path).st_ino != old_ino  # replaced, not rewritten in place
        # a rewritten journal starts with this process's OPENED record
        assert path.read_bytes() == HEADER + opened() + keep[0] + keep[1]
        assert j.size == len(HEADER + opened() + keep[0] + keep[1])
        assert sorted(os.listdir(tmp_path)) == ["journal"]  # no temporary left behind
        # appends go to the new file
        j.add(jr.range_record(2000, 1, None))
        j.write()
        assert j.size == os.path.getsize(path)
    finally:
        j.close()
    records, valid = jr.read_journal(path)
    assert valid == os.path.getsize(path)
    assert [r.type for r in records] == [
        jr.Rec.OPENED,
        jr.Rec.CHECKPOINT,
        jr.Rec.RANGE,
        jr.Rec.RANGE_SYNCED,
    ]
    assert records[0].opened() == (os.getpid(), BOOT)
    assert records[1].payload == b"state"
    assert records[3].range() == (2000, 1, None)


def test_rewrite_ignores_stale_temporary(tmp_path: Path) -> None:
    """A crash during an earlier rewrite left ``journal.tmp`` behind: it never counts."""
    path = tmp_path / "journal"
    (tmp_path / "journal.tmp").write_bytes(b"garbage from a crashed rewrite" * 100)
    j = quiet(path)
    try:
        j.add(jr.range_record(0, 1, None))
        j.write()
        assert jr.read_journal(path)[0][0].range() == (0, 1, None)
        j.rewrite([jr.checkpoint_record(b"s")])
    finally:
        j.close()
    assert path.read_bytes() == HEADER + opened() + by_hand(3, b"s")
    assert not (tmp_path / "journal.tmp").exists()


def test_rewrite_to_nothing(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        j.add(jr.range_record(0, 1, None))
        j.write()
        j.rewrite([])
        assert j.size == len(HEADER + opened())
    finally:
        j.close()
    records, valid = jr.read_journal(path)
    assert [r.type for r in records] == [jr.Rec.OPENED] and valid == len(HEADER + opened())


def test_large_write_is_one_complete_append(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    state = os.urandom(3 << 20)
    try:
        j.add(jr.checkpoint_record(state))
        j.add(jr.range_record(5, 6, None))
        j.write()
    finally:
        j.close()
    records, valid = jr.read_journal(path)
    assert valid == os.path.getsize(path)
    assert records[0].payload == state and records[1].range() == (5, 6, None)


def test_failed_write_leaves_no_torn_record(tmp_path: Path) -> None:
    """A write that fails half way (disk full; here the file size limit) must not leave a
    partial record in front of the records appended after it: they would be unreadable."""
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        first = jr.range_record(0, 10, b"a" * 16)
        j.add(first)
        j.write()
        limit = j.size + len(first) + 10  # room for one record and a bit of the next
        j.add(jr.range_record(10, 10, b"b" * 16))
        j.add(jr.range_record(20, 10, b"c" * 16))
        with file_size_limit(limit), pytest.raises(OSError):
            j.write()
        retry = jr.range_record(10, 20, b"d" * 16)
        j.add(retry)
        j.write()
        assert j.size == os.path.getsize(path)
    finally:
        j.close()
    records, valid = jr.read_journal(path)
    assert valid == os.path.getsize(path)
    assert records[0].range() == (0, 10, b"a" * 16)
    assert records[-1].range() == (10, 20, b"d" * 16)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE for this process (writes beyond it fail with EFBIG, SIGXFSZ ignored)."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


# -- RUN and OPENED records ------------------------------------------------------------------


def run_by_hand(start: int, end: int, flags: int, tail: bytes = b"") -> bytes:
    return by_hand(5, struct.pack("<QQB", start, end, flags) + tail)


def test_opening_announces_the_boot(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    jr.Journal(path, boot_id=BOOT).close()
    jr.Journal(path, boot_id="other-boot").close()
    assert path.read_bytes() == HEADER + opened() + opened("other-boot")
    assert jr.current_boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_run_record_matches_documented_format() -> None:
    state = bytes(range(jr.HASH_STATE_SIZE))
    digest = b"d" * 16
    assert jr.run_record(1, 9) == run_by_hand(1, 9, 0)
    assert jr.run_record(1, 9, synced=True, state=state) == run_by_hand(1, 9, 5, state)
    assert jr.run_record(1, 9, digest=digest, state=state) == run_by_hand(1, 9, 6, digest + state)
    records, _ = jr.parse(HEADER + run_by_hand(3, 7, 6, digest + state))
    assert records[0].run() == jr.RangeRec(3, 7, digest=digest, state=state)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("<QQB", 1, 2, 2),  # DIGEST flag, no digest
        struct.pack("<QQB", 1, 2, 4) + b"x" * 16,  # STATE flag, short state
        struct.pack("<QQB", 1, 2, 0) + b"extra",
        struct.pack("<QQB", 5, 2, 0),  # end before start
        struct.pack("<QQB", 1, 2, 8),  # unknown flag
        struct.pack("<QQ", 1, 2),
    ],
)
def test_malformed_run_stops(payload: bytes) -> None:
    good = run_by_hand(0, 1, 0)
    records, valid = jr.parse(HEADER + good + by_hand(5, payload) + good)
    assert len(records) == 1 and valid == len(HEADER + good)


def test_add_run_coalesces_contiguous_segments_of_one_kind(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    states = iter([b"S" * jr.HASH_STATE_SIZE, b"T" * jr.HASH_STATE_SIZE])
    j = quiet(path)
    try:
        j.add_run(0, 10, state=lambda: next(states))
        j.add_run(10, 30)  # continues: one record, with the state of when it is framed
        j.add_run(30, 40, data=b"x" * 10)  # with a digest: another kind, another record
        j.add_run(40, 45, data=b"y" * 5)
        j.add_run(50, 60, data=b"z" * 10)  # not contiguous
        j.add_run(60, 61, synced=True)  # synced: another kind
        assert dirty(j)
        j.write()
        j.add_run(61, 62, state=lambda: next(states))  # a new batch: a new record
        j.write()
    finally:
        j.close()
    import blake3

    records, _ = jr.read_journal(path)
    assert [r.run() for r in records] == [
        jr.RangeRec(0, 30, state=b"S" * jr.HASH_STATE_SIZE),
        jr.RangeRec(30, 45, digest=blake3.blake3(b"x" * 10 + b"y" * 5).digest(length=16)),
        jr.RangeRec(50, 60, digest=blake3.blake3(b"z" * 10).digest(length=16)),
        jr.RangeRec(60, 61, synced=True),
        jr.RangeRec(61, 62, state=b"T" * jr.HASH_STATE_SIZE),
    ]


def test_a_record_added_after_a_run_follows_it(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    j = quiet(path)
    try:
        j.add_run(0, 10)
        j.add(jr.checkpoint_record(b"cp"))
        assert j.take() == [jr.run_record(0, 10), jr.checkpoint_record(b"cp")]
        j.add_run(0, 10)
        assert j.take() == [jr.run_record(0, 10)]  # take frames the run too
        assert not dirty(j)
    finally:
        j.close()


def test_compact_keeps_uncovered_runs_and_the_buffer(tmp_path: Path) -> None:
    import ftcore

    path = tmp_path / "journal"
    rs = ftcore.RangeSet()
    rs.add(0, 100)
    state = ftcore.Assembler.saved_ranges  # only the ranges matter to compact
    with ftcore.Assembler(tmp_path / "data") as a:
        a.place(0, b"a" * 100)
        saved = a.dumps()
    assert list(state(saved)) == list(rs)
    j = quiet(path)
    try:
        j.add_run(0, 100, state=lambda: b"S" * jr.HASH_STATE_SIZE)
        j.add_run(200, 300, data=b"q" * 100)
        j.write()
        j.add_run(300, 310, data=b"r" * 10)  # buffered: stays buffered
        j.compact(saved)
        assert dirty(j)
        j.write()
    finally:
        j.close()
    records, _ = jr.read_journal(path)
    assert [r.type for r in records] == [
        jr.Rec.OPENED,
        jr.Rec.CHECKPOINT,
        jr.Rec.RUN,
        jr.Rec.RUN,
    ]
    assert [(r.run().start, r.run().end) for r in records[2:]] == [(200, 300), (300, 310)]
