"""Pure-Python twins of the ftcore kernels: the reference the compiled ones are tested against.

Same classes, same behaviour, same serialised formats (a state saved by one loads in the
other). Slow by design (SHA-256 is computed in Python here because hashlib cannot export its
state); never selected unless FTCORE_PURE=1.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import struct
from collections.abc import Iterator
from typing import Any

DEBUG = False
READBACK_CHUNK = 1 << 20
RECYCLE_CHUNK = 8 << 20
_MAX_OFFSET = (1 << 63) - 1
_RS_MAGIC = b"FTR1"
_SH_MAGIC = b"FTS1"
_AS_MAGIC = b"FTA1"
_U64 = struct.Struct("<Q")
_SH_STATE = struct.Struct("<4s8IQ64s")
_AS_HEAD = struct.Struct("<4sQI")


def _check_offset(value: int, what: str) -> int:
    if value < 0 or value > _MAX_OFFSET:
        raise ValueError(f"{what} out of range: {value!r}")
    return value


def _as_bytes(data: Any) -> memoryview:
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class RangeSet:
    """Sorted, disjoint, non-adjacent [start, end) intervals (see ftcore._core.RangeSet)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._covered = 0

    def add(self, start: int, end: int) -> int:
        _check_offset(start, "start")
        _check_offset(end, "end")
        if end < start:
            raise ValueError(f"end {end} < start {start}")
        if start == end:
            return 0
        starts, ends = self._starts, self._ends
        i = bisect.bisect_left(ends, start)  # first interval with end >= start
        j = bisect.bisect_right(starts, end)  # first interval with start > end
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            added = end - start
        else:
            old = sum(ends[k] - starts[k] for k in range(i, j))
            new_start = min(start, starts[i])
            new_end = max(end, ends[j - 1])
            starts[i:j] = [new_start]
            ends[i:j] = [new_end]
            added = (new_end - new_start) - old
        self._covered += added
        return added

    @property
    def covered(self) -> int:
        return self._covered

    @property
    def prefix(self) -> int:
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def complete(self, size: int) -> bool:
        return size <= 0 or self.prefix >= size

    def contains(self, start: int, end: int) -> bool:
        _check_offset(start, "start")
        _check_offset(end, "end")
        if start >= end:
            return True
        i = bisect.bisect_left(self._ends, start + 1)
        return i < len(self._ends) and self._starts[i] <= start and self._ends[i] >= end

    def gaps(self, size: int, limit: int | None = None) -> list[tuple[int, int]]:
        _check_offset(size, "size")
        out: list[tuple[int, int]] = []
        if limit == 0:
            return out
        pos = 0
        for s, e in zip(self._starts, self._ends, strict=True):
            if pos >= size:
                break
            if s > pos:
                out.append((pos, min(s, size)))
                if len(out) == limit:
                    return out
            pos = max(pos, e)
        if pos < size:
            out.append((pos, size))
        return out

    def clip(self, size: int) -> None:
        _check_offset(size, "size")
        while self._starts and self._starts[-1] >= size:
            self._covered -= self._ends.pop() - self._starts.pop()
        if self._ends and self._ends[-1] > size:
            self._covered -= self._ends[-1] - size
            self._ends[-1] = size

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(list(zip(self._starts, self._ends, strict=True)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RangeSet):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def dumps(self) -> bytes:
        parts = [_RS_MAGIC, _U64.pack(len(self._starts))]
        for s, e in zip(self._starts, self._ends, strict=True):
            parts += [_U64.pack(s), _U64.pack(e)]
        return b"".join(parts)

    @classmethod
    def loads(cls, data: bytes | bytearray | memoryview) -> RangeSet:
        view = _as_bytes(data)
        if len(view) < 12 or bytes(view[:4]) != _RS_MAGIC:
            raise ValueError("not a serialised RangeSet")
        (n,) = _U64.unpack_from(view, 4)
        if len(view) != 12 + 16 * n:
            raise ValueError("truncated or oversized RangeSet")
        rs = cls()
        for k in range(n):
            s, e = struct.unpack_from("<QQ", view, 12 + 16 * k)
            if s >= e or (k and rs._ends[-1] >= s):
                raise ValueError("RangeSet intervals not sorted, disjoint and non-adjacent")
            rs._starts.append(s)
            rs._ends.append(e)
            rs._covered += e - s
        return rs


class SparseFile:
    """Positional writes into a sparse staging file (see ftcore._core.SparseFile)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = path
        self._fd = -1
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        self._fd = os.open(path, flags, 0o644)

    def _ensure_open(self) -> int:
        if self._fd < 0:
            raise ValueError("I/O operation on closed SparseFile")
        return self._fd

    def write(self, offset: int, data: Any) -> None:
        fd = self._ensure_open()
        view = _as_bytes(data)
        _check_offset(offset, "offset")
        if not len(view):
            return
        _check_offset(offset + len(view), "offset + length")
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], offset + done)  # retries EINTR itself (PEP 475)
            if n == 0:
                raise OSError(5, "pwrite wrote nothing", self.path)
            done += n

    def read(self, offset: int, length: int) -> bytes:
        fd = self._ensure_open()
        _check_offset(offset, "offset")
        if length < 0:
            raise ValueError("negative length")
        chunks = []
        done = 0
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    def readinto(self, offset: int, buf: Any) -> int:
        view = _as_bytes(buf)
        data = self.read(offset, len(view))
        view[: len(data)] = data
        return len(data)

    def flush(self) -> None:
        os.fdatasync(self._ensure_open())

    def truncate(self, size: int) -> None:
        os.ftruncate(self._ensure_open(), _check_offset(size, "size"))

    def size(self) -> int:
        return os.fstat(self._ensure_open()).st_size

    def fileno(self) -> int:
        return self._ensure_open()

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)

    def __enter__(self) -> SparseFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# SHA-256 (FIPS 180-4), written out so that its state is ours to save.
_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
    0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
    0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
    0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
    0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
    0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
    0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
    0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
    0xC67178F2,
)  # fmt: skip
_H0 = (
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
    0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
)  # fmt: skip
_M32 = 0xFFFFFFFF


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M32


def _compress(h: list[int], block: bytes | memoryview) -> None:
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        x, y = w[t - 15], w[t - 2]
        s0 = _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)
        s1 = _rotr(y, 17) ^ _rotr(y, 19) ^ (y >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M32)
    a, b, c, d, e, f, g, hh = h
    for t in range(64):
        t1 = hh + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t]
        t1 = (t1 + w[t]) & _M32
        t2 = ((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & _M32
        a, b, c, d, e, f, g, hh = (t1 + t2) & _M32, a, b, c, (d + t1) & _M32, e, f, g
    for k, v in enumerate((a, b, c, d, e, f, g, hh)):
        h[k] = (h[k] + v) & _M32


class RollingSha256:
    """SHA-256 with a saveable state (see ftcore._core.RollingSha256)."""

    def __init__(self) -> None:
        self._h = list(_H0)
        self._buf = bytearray()
        self._length = 0

    def update(self, data: Any) -> None:
        view = _as_bytes(data)
        self._length += len(view)
        buf = self._buf
        pos = 0
        if buf:
            take = min(64 - len(buf), len(view))
            buf += view[:take]
            pos = take
            if len(buf) < 64:
                return
            _compress(self._h, bytes(buf))
            buf.clear()
        while len(view) - pos >= 64:
            _compress(self._h, view[pos : pos + 64])
            pos += 64
        buf += view[pos:]

    @property
    def length(self) -> int:
        return self._length

    def digest(self) -> bytes:
        h = list(self._h)
        tail = bytes(self._buf) + b"\x80"
        tail += bytes((56 - len(tail)) % 64) + struct.pack(">Q", (self._length * 8) & (2**64 - 1))
        for k in range(0, len(tail), 64):
            _compress(h, tail[k : k + 64])
        return struct.pack(">8I", *h)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def copy(self) -> RollingSha256:
        other = RollingSha256()
        other._h = list(self._h)
        other._buf = bytearray(self._buf)
        other._length = self._length
        return other

    def dumps(self) -> bytes:
        block = bytes(self._buf) + bytes(64 - len(self._buf))
        return _SH_STATE.pack(_SH_MAGIC, *self._h, self._length, block)

    @classmethod
    def loads(cls, data: bytes) -> RollingSha256:
        if len(data) != _SH_STATE.size:
            raise ValueError("not a serialised RollingSha256 state")
        fields = _SH_STATE.unpack(data)
        if fields[0] != _SH_MAGIC:
            raise ValueError("not a serialised RollingSha256 state")
        length, block = fields[9], fields[10]
        if length >> 61:
            raise ValueError("RollingSha256 length out of range")
        num = length & 63
        if block[num:] != bytes(64 - num):
            raise ValueError("RollingSha256 state: garbage after the pending block")
        self = cls()
        self._h = list(fields[1:9])
        self._length = length
        self._buf = bytearray(block[:num])
        return self


_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


class PageCache:
    """The two page-cache calls of recycling (see ftcore._core.Assembler.recycle); a test
    passes its own to see them. ``os`` has no ``sync_file_range``: libc's, through ctypes
    (``fdatasync`` where there is none, which is what it approximates)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "sync_file_range", None)
        if fn is not None:
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            fn.restype = ctypes.c_int
        self._sync_file_range = fn

    def _range(self, fd: int, offset: int, length: int, flags: int) -> None:
        if self._sync_file_range is not None:
            self._sync_file_range(fd, offset, length, flags)
        else:  # pragma: no cover - every Linux libc has it
            os.fdatasync(fd)

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        self._range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def drop(self, fd: int, offset: int, length: int) -> None:
        """Wait for the range's writeback, then drop its pages."""
        self._range(
            fd,
            offset,
            length,
            _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER,
        )
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _split_state(state: Any) -> tuple[int, memoryview, memoryview]:
    """(hashed, hash state, ranges) of a saved Assembler state (see ftcore._core)."""
    view = _as_bytes(state)
    if len(view) < _AS_HEAD.size:
        raise ValueError("not a serialised Assembler state")
    magic, hashed, hlen = _AS_HEAD.unpack_from(view, 0)
    if magic != _AS_MAGIC or len(view) < _AS_HEAD.size + hlen:
        raise ValueError("not a serialised Assembler state")
    return hashed, view[_AS_HEAD.size : _AS_HEAD.size + hlen], view[_AS_HEAD.size + hlen :]


class Assembler:
    """One file being assembled (see ftcore._core.Assembler for the invariants)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: bytes | None = None,
        *,
        recycle: bool = False,
        page_cache: PageCache | None = None,
    ) -> None:
        self.recycle = recycle
        self._page_cache = page_cache if page_cache is not None else PageCache()
        self._wb_end = 0
        self._dropped = 0
        self.file = SparseFile(path)
        self.ranges = RangeSet()
        self._hash = RollingSha256()
        self._hashed = 0
        if state is not None:
            self._load(state)

    def _load(self, state: bytes | bytearray | memoryview) -> None:
        hashed, hash_state, ranges = _split_state(state)
        self._hash = RollingSha256.loads(bytes(hash_state))
        self.ranges = RangeSet.loads(ranges)
        if self._hash.length != hashed or hashed > self.ranges.prefix:
            raise ValueError("Assembler state inconsistent: hash beyond the contiguous prefix")
        self._hashed = hashed

    def dumps(self) -> bytes:
        h = self._hash.dumps()
        return _AS_HEAD.pack(_AS_MAGIC, self._hashed, len(h)) + h + self.ranges.dumps()

    def hash_state(self) -> bytes:
        return self._hash.dumps()

    def adopt_hash(self, state: Any) -> None:
        h = RollingSha256.loads(bytes(state))
        if h.length > self.ranges.prefix:
            raise ValueError("hash state beyond the contiguous prefix")
        self._hash = h
        self._hashed = h.length

    def catch_up(self) -> int:
        start, end = self._hashed, self.ranges.prefix
        if end <= start:
            return 0
        self._absorb_from_file(start, end)
        return end - start

    @property
    def recycled(self) -> int:
        return self._dropped

    def recycle_behind(self) -> None:
        fd = self.file._fd
        if not self.recycle or fd < 0:
            return
        limit = self._hashed // RECYCLE_CHUNK * RECYCLE_CHUNK
        while self._wb_end < limit:
            start = self._wb_end
            self._page_cache.start_writeback(fd, start, RECYCLE_CHUNK)
            self._wb_end = start + RECYCLE_CHUNK
            if self._dropped < start:
                self._page_cache.drop(fd, self._dropped, start - self._dropped)
                self._dropped = start

    @staticmethod
    def saved_ranges(state: Any) -> RangeSet:
        """The ranges a saved state (``dumps``) records, without opening its file."""
        return RangeSet.loads(_split_state(state)[2])

    def _reset_hash(self) -> None:
        self._hash = RollingSha256()
        self._hashed = 0

    def _absorb_from_file(self, start: int, end: int) -> None:
        assert start == self._hashed, "absorb must continue at the hashed end"
        while start < end:
            want = min(end - start, READBACK_CHUNK)
            chunk = self.file.read(start, want)
            if len(chunk) != want:
                raise OSError(
                    5,
                    f"staging file shorter than its recorded ranges ({start + len(chunk)} < {end})",
                    self.file.path,
                )
            self._hash.update(chunk)
            start += want
            self._hashed = start
        if self.recycle:
            self.recycle_behind()

    def place(self, offset: int, data: Any) -> int:
        view = _as_bytes(data)
        n = len(view)
        _check_offset(offset, "offset")
        if n == 0:
            return 0
        end = _check_offset(offset + n, "offset + length")
        if offset < self._hashed:
            overlap = min(end, self._hashed) - offset
            if self.file.read(offset, overlap) != view[:overlap]:
                self._reset_hash()
        self.file.write(offset, view)
        old_prefix = self.ranges.prefix
        added = self.ranges.add(offset, end)
        new_prefix = self.ranges.prefix
        if new_prefix > old_prefix and self._hashed == old_prefix:
            if end > self._hashed:
                self._hash.update(view[self._hashed - offset :])
                self._hashed = end
            if new_prefix > self._hashed:
                self._absorb_from_file(self._hashed, new_prefix)
            elif self.recycle:
                self.recycle_behind()
        return added

    def mark(self, offset: int, length: int, *, absorb: bool = True) -> int:
        _check_offset(offset, "offset")
        end = _check_offset(offset + length, "offset + length")
        if length < 0:
            raise ValueError("negative length")
        old_prefix = self.ranges.prefix
        added = self.ranges.add(offset, end)
        if absorb and self._hashed == old_prefix:
            self._absorb_from_file(self._hashed, self.ranges.prefix)
        return added

    @property
    def hashed(self) -> int:
        return self._hashed

    @property
    def prefix(self) -> int:
        return self.ranges.prefix

    @property
    def covered(self) -> int:
        return self.ranges.covered

    def complete(self, size: int) -> bool:
        return self.ranges.complete(size)

    def gaps(self, size: int, limit: int | None = None) -> list[tuple[int, int]]:
        return self.ranges.gaps(size, limit)

    def digest(self, size: int) -> bytes:
        _check_offset(size, "size")
        if not self.ranges.complete(size):
            raise ValueError(f"[0, {size}) is not fully present")
        if self._hashed > size:
            self._reset_hash()
        self._absorb_from_file(self._hashed, size)
        return self._hash.digest()

    def truncate(self, size: int) -> None:
        _check_offset(size, "size")
        self.file.truncate(size)
        self.ranges.clip(size)
        if self._hashed > size:
            self._reset_hash()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Assembler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
