"""The per-transfer journal: an append-only record of what the staging data file holds.

File format: the header ``FTJ1\\n``, then records, each framed as

    u8 type | u32 payload length | payload | u32 CRC-32 of (type, length, payload)

all little-endian. A reader stops at the first record that is truncated or fails its CRC (a
torn tail after a crash) and the journal is cut back to the last good record.

Record types:

- ``RANGE`` (``offset u64, length u64, blake3 16 bytes``): bytes that were written to the data
  file but not necessarily flushed (durability ``fast``). Recovery re-hashes them with BLAKE3
  and drops a range whose bytes do not match, so the client resends it rather than ending up
  with a corrupt file.
- ``RANGE_SYNCED`` (``offset u64, length u64``): bytes flushed (fdatasync) before the record
  was written (durability ``sync``, group commit).
- ``CHECKPOINT`` (an ``ftcore.Assembler`` state: ranges and rolling SHA-256): written after the
  data file was flushed, so everything it claims is on stable storage. Recovery starts from
  the last one, so the received bytes are not read again.
- ``EXPORTING`` (``size u64``, then the path of the file being exported, UTF-8, for the
  record): written (and synced) once the file is cut at ``size`` and flushed, before the
  exporter takes it; recovery then knows [0, size) is on disk, and asks the exporter whether
  the export completed.

:func:`replay` is the one reader of a journal's meaning: recovery (which reopens the
transfer) and the HTTP API's list of transfers in progress (which only reports it) both
start from what it returns.
"""

from __future__ import annotations

import contextlib
import enum
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ftcore

HEADER = b"FTJ1\n"
_HEAD = struct.Struct("<BI")
_CRC = struct.Struct("<I")
_RANGE = struct.Struct("<QQ16s")
_RANGE_SYNCED = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
#: a record longer than this is corruption, not data (the largest is a CHECKPOINT)
MAX_RECORD = 64 << 20


class Rec(enum.IntEnum):
    RANGE = 1
    RANGE_SYNCED = 2
    CHECKPOINT = 3
    EXPORTING = 4


@dataclass(frozen=True, slots=True)
class Record:
    type: Rec
    payload: bytes

    def range(self) -> tuple[int, int, bytes | None]:
        """(offset, length, blake3-16 or None) of a RANGE / RANGE_SYNCED record."""
        if self.type is Rec.RANGE:
            off, length, digest = _RANGE.unpack(self.payload)
            return off, length, digest
        off, length = _RANGE_SYNCED.unpack(self.payload)
        return off, length, None

    def exporting(self) -> tuple[int, str]:
        (size,) = _U64.unpack_from(self.payload)
        return size, self.payload[_U64.size :].decode("utf-8", "surrogateescape")


def frame(rtype: Rec, payload: bytes) -> bytes:
    head = _HEAD.pack(rtype, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def range_record(offset: int, length: int, blake3_16: bytes | None) -> bytes:
    if blake3_16 is None:
        return frame(Rec.RANGE_SYNCED, _RANGE_SYNCED.pack(offset, length))
    return frame(Rec.RANGE, _RANGE.pack(offset, length, blake3_16))


def checkpoint_record(state: bytes) -> bytes:
    return frame(Rec.CHECKPOINT, state)


def exporting_record(size: int, target: str) -> bytes:
    return frame(Rec.EXPORTING, _U64.pack(size) + target.encode("utf-8", "surrogateescape"))


def parse(data: bytes) -> tuple[list[Record], int]:
    """Records of a journal's bytes and the length of its valid part (header included).

    Raises ValueError when the header is wrong: that file is not a journal at all.
    """
    if not data.startswith(HEADER):
        raise ValueError("not an ftserver journal (bad header)")
    out: list[Record] = []
    pos = len(HEADER)
    n = len(data)
    types = {int(t): t for t in Rec}
    while pos + _HEAD.size <= n:
        rtype, length = _HEAD.unpack_from(data, pos)
        end = pos + _HEAD.size + length + _CRC.size
        if rtype not in types or length > MAX_RECORD or end > n:
            break
        payload = data[pos + _HEAD.size : pos + _HEAD.size + length]
        (crc,) = _CRC.unpack_from(data, end - _CRC.size)
        if crc != zlib.crc32(payload, zlib.crc32(data[pos : pos + _HEAD.size])):
            break
        rec = Record(types[rtype], payload)
        if rec.type in (Rec.RANGE, Rec.RANGE_SYNCED):
            want = _RANGE.size if rec.type is Rec.RANGE else _RANGE_SYNCED.size
            if length != want:
                break
        elif rec.type is Rec.EXPORTING and length < _U64.size:
            break
        out.append(rec)
        pos = end
    return out, pos


class Journal:
    """Appends records to one transfer's journal file.

    Records are buffered by :meth:`add` and written by :meth:`write` in one ``write(2)``; the
    caller writes before it acknowledges (a crash of the process then loses nothing it
    acknowledged) and, in durability ``sync``, also calls :meth:`sync`.

    It holds no descriptor between writes: each batch opens the file ``O_APPEND``, writes and
    closes it (a few microseconds, against a batch of segments). A fleet of idle transfers
    then costs no descriptors for its journals (docs/architecture.md, "Memory and
    descriptors"); a descriptor kept per journal was one of four per uploading device.
    """

    __slots__ = ("_pending", "path", "size")

    def __init__(self, path: Path, *, valid_length: int | None = None) -> None:
        self.path = path
        self._pending: list[bytes] = []
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if valid_length is not None and size > valid_length:
                os.ftruncate(fd, valid_length)  # cut a torn tail
                size = valid_length
            if size == 0:
                _write_all(fd, HEADER)
                size = len(HEADER)
        finally:
            os.close(fd)
        self.size = size

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def add(self, record: bytes) -> None:
        self._pending.append(record)

    def take(self) -> list[bytes]:
        """Remove and return the buffered records (to write them elsewhere, or drop them)."""
        out, self._pending = self._pending, []
        return out

    def write(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._append(data)

    def write_records(self, records: list[bytes], *, sync: bool = False) -> None:
        """Write ``records`` now, leaving the buffer alone: a group commit writes exactly the
        batch whose data it flushed, from its worker thread, while the event loop keeps
        buffering newer records (whose data was not flushed) with :meth:`add`. With ``sync``
        the journal is flushed too (through the same descriptor)."""
        if records:
            self._append(b"".join(records), sync=sync)
        elif sync:
            self.sync()

    def _append(self, data: bytes, *, sync: bool = False) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            try:
                _write_all(fd, data)
            except OSError:
                # a short write (disk full) left part of a record behind: cut it, or every
                # record appended later would sit behind a torn one and be lost to the reader
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.size)
                raise
            self.size += len(data)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)

    def sync(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Nothing to release (no descriptor is held); kept for the callers' symmetry."""

    def compact(self, state: bytes) -> None:
        """Replace the journal by a ``CHECKPOINT`` of ``state`` (an ``ftcore.Assembler``
        state whose data is flushed) and the range records that state does not cover (those
        written while its flush ran): recovery then reads a short journal."""
        self.write()
        records, _valid = read_journal(self.path)
        covered = ftcore.Assembler.saved_ranges(state)
        keep = [checkpoint_record(state)]
        keep += [
            range_record(offset, length, digest)
            for offset, length, digest in iter_ranges(records)
            if not covered.contains(offset, offset + length)
        ]
        self.rewrite(keep)

    def rewrite(self, records: list[bytes]) -> None:
        """Replace the journal by ``records`` atomically (compaction after a checkpoint)."""
        self.write()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = HEADER + b"".join(records)
            _write_all(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self.size = len(data)


@dataclass(frozen=True, slots=True)
class Replay:
    """What one transfer's journal says, for every reader of it.

    The records before the last ``EXPORTING`` record are superseded by it: that export had
    cut the file at its size and flushed it, so the ranges they name beyond the size are no
    longer in the file and [0, size) is.
    """

    #: Unix time of the journal's last write: the transfer's last activity
    last_activity: float
    #: length of the journal's valid part; a torn tail beyond it is cut when it is reopened
    valid_length: int = 0
    #: the size an export cut the file at (an ``EXPORTING`` record); None when none started
    exporting: int | None = None
    #: the last saved ``ftcore.Assembler`` state that still counts (a ``CHECKPOINT``), if any
    checkpoint: bytes | None = None
    #: (offset, length, blake3-16 or None) of every range record that still counts, in order;
    #: recovery re-checks those with a digest (written before their data was flushed)
    ranges: tuple[tuple[int, int, bytes | None], ...] = ()
    #: every byte the journal claims: the checkpoint's ranges (else the exported prefix) and
    #: the range records, each byte counted once, unverified
    received: ftcore.RangeSet = field(default_factory=ftcore.RangeSet)
    #: why the journal could not be read (nothing else then counts); None when it could
    damaged: str | None = None

    @property
    def bytes_received(self) -> int:
        return self.received.covered


def replay(path: Path) -> Replay:
    """Read and interpret a journal. Raises ``FileNotFoundError`` when there is none (and
    ``OSError`` when it cannot even be looked at); a journal that cannot be read or is not
    one comes back with :attr:`Replay.damaged` set."""
    last_activity = os.stat(path).st_mtime
    try:
        records, valid = read_journal(path)
    except (OSError, ValueError) as exc:
        return Replay(last_activity, damaged=str(exc) or type(exc).__name__)
    exporting: int | None = None
    for i in range(len(records) - 1, -1, -1):
        if records[i].type is Rec.EXPORTING:
            exporting = records[i].exporting()[0]
            records = records[i + 1 :]
            break
    checkpoint = next((r.payload for r in reversed(records) if r.type is Rec.CHECKPOINT), None)
    received: ftcore.RangeSet | None = None
    if checkpoint is not None:
        with contextlib.suppress(ValueError):
            received = ftcore.Assembler.saved_ranges(checkpoint)
    if received is None:
        received = ftcore.RangeSet()
        if exporting:
            received.add(0, exporting)
    ranges = tuple(iter_ranges(records))
    for offset, length, _digest in ranges:
        if length > 0:
            received.add(offset, offset + length)
    return Replay(last_activity, valid, exporting, checkpoint, ranges, received)


def read_journal(path: Path) -> tuple[list[Record], int]:
    with open(path, "rb") as f:
        return parse(f.read())


def iter_ranges(records: list[Record]) -> Iterator[tuple[int, int, bytes | None]]:
    for rec in records:
        if rec.type in (Rec.RANGE, Rec.RANGE_SYNCED):
            yield rec.range()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises on errors
            raise OSError(5, "write returned 0")
        view = view[n:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
