"""The per-transfer journal: an append-only record of what the staging data file holds.

File format: the header ``FTJ1\\n``, then records, each framed as

    u8 type | u32 payload length | payload | u32 CRC-32 of (type, length, payload)

all little-endian. A reader stops at the first record that is truncated or fails its CRC (a
torn tail after a crash) and the journal is cut back to the last good record.

Record types:

- ``RUN`` (``start u64, end u64, flags u8``, then the BLAKE3 (16 bytes) of the run when flag
  ``DIGEST``, then the rolling SHA-256 state (``RollingSha256.dumps``) when flag ``STATE``):
  the bytes [start, end) written by one or more segments of one batch (one record per
  transfer per batch, not per segment). ``SYNCED``: flushed before the record was written
  (durability ``sync``). ``STATE``: the hash of the file's bytes [0, state length) just
  after the run, recorded whenever the run moved the hash (it extended the contiguous
  prefix, or a rewrite reset it): a restart after a crash of the process adopts the last
  one instead of reading the prefix. ``DIGEST`` (durability ``fast``, runs that did not move
  the hash): recovery after a machine crash re-hashes the run and drops it when it does not
  match; runs with a state are checked by re-hashing from the last checkpoint's state.
- ``OPENED`` (``pid u32``, then the boot id, ASCII): written when a process opens the
  journal for appending, and first in every rewritten journal. The records after it were
  written in that boot: when it is still the current one, the page cache survived and every
  record is trusted as it stands; otherwise (a machine crash, a power cut) recovery checks
  what was not flushed.
- ``RANGE`` (``offset u64, length u64, blake3 16 bytes``; older versions, read as a ``RUN``
  with a digest): bytes that were written to the data file but not necessarily flushed
  (durability ``fast``).
- ``RANGE_SYNCED`` (``offset u64, length u64``): bytes flushed (fdatasync) before the record
  was written (durability ``sync``, group commit; older versions, read as a synced ``RUN``).
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
import functools
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3

import ftcore

HEADER = b"FTJ1\n"
_HEAD = struct.Struct("<BI")
_CRC = struct.Struct("<I")
_RANGE = struct.Struct("<QQ16s")
_RANGE_SYNCED = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_RUN = struct.Struct("<QQB")
_U32 = struct.Struct("<I")
#: size of a rolling SHA-256 state (``RollingSha256.dumps``)
HASH_STATE_SIZE = len(ftcore.RollingSha256().dumps())
_DIGEST_SIZE = 16
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
#: a record longer than this is corruption, not data (the largest is a CHECKPOINT)
MAX_RECORD = 64 << 20


class Rec(enum.IntEnum):
    RANGE = 1
    RANGE_SYNCED = 2
    CHECKPOINT = 3
    EXPORTING = 4
    RUN = 5
    OPENED = 6


class RunFlag(enum.IntFlag):
    SYNCED = 1
    DIGEST = 2
    STATE = 4


@functools.cache
def current_boot_id() -> str:
    """This machine's boot id: it changes at every boot, so a journal written under the
    current one lost nothing of its page cache."""
    with open(BOOT_ID_PATH, encoding="ascii") as f:
        return f.read().strip()


@dataclass(frozen=True, slots=True)
class RangeRec:
    """What one range record (``RUN``, or the older ``RANGE`` / ``RANGE_SYNCED``) says."""

    start: int
    end: int
    #: BLAKE3 (16 bytes) of the bytes, when they must be checked after a machine crash
    digest: bytes | None = None
    #: the rolling SHA-256 state just after the run (its length is how far it hashed)
    state: bytes | None = None
    #: the bytes were flushed before the record was written
    synced: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


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

    def run(self) -> RangeRec:
        """What a ``RUN``, ``RANGE`` or ``RANGE_SYNCED`` record says."""
        if self.type is Rec.RUN:
            start, end, flags = _RUN.unpack_from(self.payload)
            pos = _RUN.size
            digest = state = None
            if flags & RunFlag.DIGEST:
                digest = self.payload[pos : pos + _DIGEST_SIZE]
                pos += _DIGEST_SIZE
            if flags & RunFlag.STATE:
                state = self.payload[pos : pos + HASH_STATE_SIZE]
            return RangeRec(start, end, digest, state, bool(flags & RunFlag.SYNCED))
        off, length, digest = self.range()
        return RangeRec(off, off + length, digest, None, digest is None)

    def opened(self) -> tuple[int, str]:
        """(pid, boot id) of an ``OPENED`` record."""
        (pid,) = _U32.unpack_from(self.payload)
        return pid, self.payload[_U32.size :].decode("ascii", "replace")

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


def run_record(
    start: int,
    end: int,
    *,
    digest: bytes | None = None,
    state: bytes | None = None,
    synced: bool = False,
) -> bytes:
    flags = RunFlag(0)
    tail = b""
    if synced:
        flags |= RunFlag.SYNCED
    if digest is not None:
        flags |= RunFlag.DIGEST
        tail += digest
    if state is not None:
        flags |= RunFlag.STATE
        tail += state
    return frame(Rec.RUN, _RUN.pack(start, end, flags) + tail)


def opened_record(boot_id: str, pid: int | None = None) -> bytes:
    pid = os.getpid() if pid is None else pid
    return frame(Rec.OPENED, _U32.pack(pid & 0xFFFFFFFF) + boot_id.encode("ascii", "replace"))


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
        elif not _well_formed(rec.type, payload):
            break
        out.append(rec)
        pos = end
    return out, pos


def _well_formed(rtype: Rec, payload: bytes) -> bool:
    if rtype is Rec.OPENED:
        return len(payload) >= _U32.size
    if rtype is Rec.EXPORTING:
        return len(payload) >= _U64.size
    if rtype is not Rec.RUN:
        return True
    if len(payload) < _RUN.size:
        return False
    start, end, flags = _RUN.unpack_from(payload)
    want = _RUN.size
    want += _DIGEST_SIZE if flags & RunFlag.DIGEST else 0
    want += HASH_STATE_SIZE if flags & RunFlag.STATE else 0
    return end >= start and len(payload) == want and not flags & ~0x7


class _Run:
    """The run a journal is coalescing: contiguous segments of one kind, one record."""

    __slots__ = ("end", "hasher", "start", "state", "synced")

    def __init__(
        self,
        start: int,
        end: int,
        synced: bool,
        hasher: blake3.blake3 | None,
        state: Callable[[], bytes] | None,
    ) -> None:
        self.start = start
        self.end = end
        self.synced = synced
        self.hasher = hasher
        self.state = state

    def record(self) -> bytes:
        return run_record(
            self.start,
            self.end,
            digest=None if self.hasher is None else self.hasher.digest(length=_DIGEST_SIZE),
            state=None if self.state is None else self.state(),
            synced=self.synced,
        )


class Journal:
    """Appends records to one transfer's journal file.

    Records are buffered by :meth:`add` and written by :meth:`write` in one ``write(2)``; the
    caller writes before it acknowledges (a crash of the process then loses nothing it
    acknowledged) and, in durability ``sync``, also calls :meth:`sync`. :meth:`add_run`
    coalesces contiguous segments into one ``RUN`` record, framed when the buffer is written
    or taken (so it carries the hash state of that moment).

    Opening appends an ``OPENED`` record with ``boot_id`` unless ``announce`` is false
    (recovery after a machine crash rewrites the journal once it checked it, and only then
    may the journal claim the current boot).

    It holds no descriptor between writes: each batch opens the file ``O_APPEND``, writes and
    closes it (a few microseconds, against a batch of segments). A fleet of idle transfers
    then costs no descriptors for its journals (docs/architecture.md, "Memory and
    descriptors"); a descriptor kept per journal was one of four per uploading device.
    """

    __slots__ = ("_pending", "_run", "boot_id", "path", "size")

    def __init__(
        self,
        path: Path,
        *,
        valid_length: int | None = None,
        boot_id: str | None = None,
        announce: bool = True,
    ) -> None:
        self.path = path
        self.boot_id = current_boot_id() if boot_id is None else boot_id
        self._pending: list[bytes] = []
        self._run: _Run | None = None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            size = os.fstat(fd).st_size
            if valid_length is not None and size > valid_length:
                os.ftruncate(fd, valid_length)  # cut a torn tail
                size = valid_length
            if size == 0:
                write_all(fd, HEADER)
                size = len(HEADER)
            if announce:
                opened = opened_record(self.boot_id)
                write_all(fd, opened)
                size += len(opened)
        finally:
            os.close(fd)
        self.size = size

    @property
    def dirty(self) -> bool:
        return bool(self._pending) or self._run is not None

    def add(self, record: bytes) -> None:
        self._seal()
        self._pending.append(record)

    def add_run(
        self,
        start: int,
        end: int,
        *,
        data: memoryview | bytes | None = None,
        state: Callable[[], bytes] | None = None,
        synced: bool = False,
    ) -> None:
        """Record that [start, end) was written, coalesced with the run before it when it
        continues it and is of the same kind. ``data`` (those bytes) asks for a BLAKE3 of
        the run; ``state`` gives the hash state when the record is framed (pass it when the
        write moved the hash)."""
        run = self._run
        if (
            run is not None
            and run.end == start
            and run.synced == synced
            and (run.hasher is None) == (data is None)
        ):
            run.end = end
            if run.hasher is not None and data is not None:
                run.hasher.update(data)
            if state is not None:
                run.state = state
            return
        self._seal()
        self._run = _Run(start, end, synced, None if data is None else blake3.blake3(data), state)

    def _seal(self) -> None:
        run, self._run = self._run, None
        if run is not None:
            self._pending.append(run.record())

    def take(self) -> list[bytes]:
        """Remove and return the buffered records (to write them elsewhere, or drop them)."""
        self._seal()
        out, self._pending = self._pending, []
        return out

    def write(self) -> None:
        self._seal()
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
                write_all(fd, data)
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
        written while its flush ran): recovery then reads a short journal. The buffered
        records stay buffered: in durability ``sync`` their data is not flushed yet."""
        records, _valid = read_journal(self.path)
        covered = ftcore.Assembler.saved_ranges(state)
        keep = [checkpoint_record(state)]
        keep += [
            frame(rec.type, rec.payload)
            for rec in records
            if rec.type in _RANGE_TYPES
            and not covered.contains((r := rec.run()).start, max(r.end, r.start))
        ]
        self.rewrite(keep)

    def rewrite(self, records: list[bytes]) -> None:
        """Replace the journal by ``OPENED`` (this boot) and ``records`` atomically
        (compaction after a checkpoint, recovery after a machine crash). The buffered
        records stay buffered."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            data = HEADER + opened_record(self.boot_id) + b"".join(records)
            write_all(fd, data)
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
    #: every range record that still counts, in order
    ranges: tuple[RangeRec, ...] = ()
    #: the hash states of the range records after the last checkpoint, in order: the
    #: newest hash of the prefix is the last (none: the checkpoint's is)
    states: tuple[bytes, ...] = ()
    #: the boot the last records were written in (the last ``OPENED``); None when unknown
    boot_id: str | None = None
    #: every byte the journal claims: the checkpoint's ranges (else the exported prefix) and
    #: the range records, each byte counted once, unverified
    received: ftcore.RangeSet = field(default_factory=ftcore.RangeSet)
    #: why the journal could not be read (nothing else then counts); None when it could
    damaged: str | None = None

    @property
    def hash_state(self) -> bytes | None:
        return self.states[-1] if self.states else None

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
    boot_id = next((r.opened()[1] for r in reversed(records) if r.type is Rec.OPENED), None)
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
    for r in ranges:
        if r.end > r.start:
            received.add(r.start, r.end)
    states: list[bytes] = []
    for rec in reversed(records):
        if rec.type is Rec.CHECKPOINT:
            break
        if rec.type is Rec.RUN and (state := rec.run().state) is not None:
            states.append(state)
    states.reverse()
    return Replay(
        last_activity,
        valid,
        exporting,
        checkpoint,
        ranges,
        states=tuple(states),
        boot_id=boot_id,
        received=received,
    )


def read_journal(path: Path) -> tuple[list[Record], int]:
    with open(path, "rb") as f:
        return parse(f.read())


_RANGE_TYPES = (Rec.RANGE, Rec.RANGE_SYNCED, Rec.RUN)


def iter_ranges(records: list[Record]) -> Iterator[RangeRec]:
    for rec in records:
        if rec.type in _RANGE_TYPES:
            yield rec.run()


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (continuing short writes)."""
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
