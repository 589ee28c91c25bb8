# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""ftcore native kernels: range set, sparse file, rolling SHA-256, transfer assembler.

No asyncio, no sockets, no policy. The pure-Python twin of every class lives in
``ftcore._pure``; the tests run both and compare results and serialised states byte for byte
(the serialised formats are shared, so a state saved by one loads in the other).

The GIL is released only in true C kernels: pwrite/pread/fdatasync and SHA-256 over large
buffers.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.fcntl cimport O_CLOEXEC, O_CREAT, O_RDWR, open as c_open
from posix.stat cimport fstat, struct_stat
from posix.types cimport off_t
from posix.unistd cimport close as c_close, ftruncate, pread, pwrite

import os
import struct

cdef extern from "unistd.h" nogil:
    int fdatasync(int fd)

cdef extern from "fcntl.h" nogil:
    # Linux; _GNU_SOURCE comes with Python.h
    int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
    int posix_fadvise(int fd, off_t offset, off_t len, int advice)
    enum:
        SYNC_FILE_RANGE_WAIT_BEFORE
        SYNC_FILE_RANGE_WRITE
        SYNC_FILE_RANGE_WAIT_AFTER
        POSIX_FADV_DONTNEED

cdef extern from *:
    """
    #ifndef FTCORE_DEBUG
    #define FTCORE_DEBUG 0
    #endif
    """
    const int FTCORE_DEBUG

#: True when built with FTCORE_DEBUG=1 (range-set invariant checks after every change).
DEBUG = bool(FTCORE_DEBUG)

#: Bytes read back per chunk when the hash must absorb data from the file.
READBACK_CHUNK = 1 << 20
#: Buffers at least this large are hashed with the GIL released.
NOGIL_HASH_MIN = 16 * 1024
#: Page-cache recycling works in chunks of this many bytes (see Assembler.recycle).
RECYCLE_CHUNK = 8 << 20

_RS_MAGIC = b"FTR1"
_SH_MAGIC = b"FTS1"
_AS_MAGIC = b"FTA1"
_U64 = struct.Struct("<Q")
_SH_STATE = struct.Struct("<4s8IQ64s")
_AS_HEAD = struct.Struct("<4sQI")
_MAX_OFFSET = (1 << 63) - 1


cdef inline uint64_t _max64(uint64_t a, uint64_t b) noexcept nogil:
    return a if a > b else b


cdef inline uint64_t _min64(uint64_t a, uint64_t b) noexcept nogil:
    return a if a < b else b


cdef uint64_t _check_offset(object value, str what) except? 0:
    if value < 0 or value > _MAX_OFFSET:
        raise ValueError(f"{what} out of range: {value!r}")
    return <uint64_t>value


# --------------------------------------------------------------------------------------------
# Range set
# --------------------------------------------------------------------------------------------

cdef class RangeSet:
    """A set of byte ranges [start, end), kept as sorted, disjoint, non-adjacent intervals.

    ``add`` merges overlaps and neighbours. Appending at or after the last interval (in-order
    uploads) is O(1) amortised; an arbitrary insertion is a binary search plus one memmove.
    """

    def __cinit__(self):
        self._starts = NULL
        self._ends = NULL
        self._n = 0
        self._cap = 0
        self._covered = 0

    def __dealloc__(self):
        PyMem_Free(self._starts)
        PyMem_Free(self._ends)

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef uint64_t *starts
        cdef uint64_t *ends
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 8
        if cap < need:
            cap = need
        starts = <uint64_t *>PyMem_Realloc(self._starts, cap * sizeof(uint64_t))
        if starts == NULL:
            raise MemoryError()
        self._starts = starts
        ends = <uint64_t *>PyMem_Realloc(self._ends, cap * sizeof(uint64_t))
        if ends == NULL:
            raise MemoryError()
        self._ends = ends
        self._cap = cap
        return 0

    cdef Py_ssize_t _lower(self, uint64_t start) noexcept:
        # first interval whose end >= start (it touches or overlaps [start, ...))
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._ends[mid] < start:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef Py_ssize_t _upper(self, uint64_t end) noexcept:
        # first interval whose start > end (strictly after [..., end], not adjacent)
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._starts[mid] <= end:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef object _add(self, uint64_t start, uint64_t end):
        """Insert [start, end); return the number of bytes that were not covered before."""
        cdef Py_ssize_t n = self._n, i, j, k
        cdef uint64_t old = 0, new_start, new_end, added
        if start >= end:
            return 0
        # fast path: at or after the last interval
        if n == 0 or start > self._ends[n - 1]:
            self._reserve(n + 1)
            self._starts[n] = start
            self._ends[n] = end
            self._n = n + 1
            self._covered += end - start
            if FTCORE_DEBUG:
                self._check()
            return end - start
        if start >= self._starts[n - 1]:
            if end > self._ends[n - 1]:
                added = end - self._ends[n - 1]
                self._ends[n - 1] = end
                self._covered += added
            else:
                added = 0
            if FTCORE_DEBUG:
                self._check()
            return added
        # general case: intervals i..j-1 touch or overlap [start, end)
        i = self._lower(start)
        j = self._upper(end)
        if i == j:
            self._reserve(n + 1)
            memmove(&self._starts[i + 1], &self._starts[i], (n - i) * sizeof(uint64_t))
            memmove(&self._ends[i + 1], &self._ends[i], (n - i) * sizeof(uint64_t))
            self._starts[i] = start
            self._ends[i] = end
            self._n = n + 1
            added = end - start
        else:
            for k in range(i, j):
                old += self._ends[k] - self._starts[k]
            new_start = start if start < self._starts[i] else self._starts[i]
            new_end = end if end > self._ends[j - 1] else self._ends[j - 1]
            added = (new_end - new_start) - old
            self._starts[i] = new_start
            self._ends[i] = new_end
            if j - i > 1:
                memmove(&self._starts[i + 1], &self._starts[j], (n - j) * sizeof(uint64_t))
                memmove(&self._ends[i + 1], &self._ends[j], (n - j) * sizeof(uint64_t))
                self._n = n - (j - i - 1)
        self._covered += added
        if FTCORE_DEBUG:
            self._check()
        return added

    cdef uint64_t _prefix(self) noexcept:
        if self._n and self._starts[0] == 0:
            return self._ends[0]
        return 0

    cdef int _check(self) except -1:
        cdef Py_ssize_t k
        cdef uint64_t total = 0
        for k in range(self._n):
            if self._starts[k] >= self._ends[k]:
                raise AssertionError(f"RangeSet: empty or inverted interval at {k}")
            if k and self._ends[k - 1] >= self._starts[k]:
                raise AssertionError(f"RangeSet: intervals {k - 1} and {k} touch or overlap")
            total += self._ends[k] - self._starts[k]
        if total != self._covered:
            raise AssertionError(f"RangeSet: covered {self._covered} != sum {total}")
        return 0

    def add(self, start, end):
        """Insert [start, end). Returns how many of those bytes were new."""
        cdef uint64_t s = _check_offset(start, "start")
        cdef uint64_t e = _check_offset(end, "end")
        if e < s:
            raise ValueError(f"end {end} < start {start}")
        return self._add(s, e)

    @property
    def covered(self):
        """Total number of bytes present."""
        return self._covered

    @property
    def prefix(self):
        """End of the contiguous range starting at 0 (0 when byte 0 is missing)."""
        return self._prefix()

    def complete(self, size):
        """True when [0, size) is fully present."""
        return size <= 0 or self._prefix() >= <uint64_t>size

    def contains(self, start, end):
        """True when [start, end) is fully present."""
        cdef uint64_t s = _check_offset(start, "start"), e = _check_offset(end, "end")
        cdef Py_ssize_t i
        if s >= e:
            return True
        i = self._lower(s + 1)  # the interval holding byte s, if any
        return i < self._n and self._starts[i] <= s and self._ends[i] >= e

    def gaps(self, size, limit=None):
        """The missing half-open ranges of [0, size), in order; at most ``limit`` of them."""
        cdef uint64_t n = _check_offset(size, "size"), pos = 0
        cdef Py_ssize_t k
        cdef list out = []
        cdef Py_ssize_t cap = -1 if limit is None else limit
        if cap == 0:
            return out
        for k in range(self._n):
            if pos >= n:
                break
            if self._starts[k] > pos:
                out.append((pos, _min64(self._starts[k], n)))
                if len(out) == cap:
                    return out
            pos = _max64(pos, self._ends[k])
        if pos < n:
            out.append((pos, n))
        return out

    def clip(self, size):
        """Forget everything at or beyond ``size``."""
        cdef uint64_t n = _check_offset(size, "size")
        while self._n and self._starts[self._n - 1] >= n:
            self._covered -= self._ends[self._n - 1] - self._starts[self._n - 1]
            self._n -= 1
        if self._n and self._ends[self._n - 1] > n:
            self._covered -= self._ends[self._n - 1] - n
            self._ends[self._n - 1] = n
        if FTCORE_DEBUG:
            self._check()

    def __len__(self):
        return self._n

    def __iter__(self):
        cdef Py_ssize_t k
        return iter([(self._starts[k], self._ends[k]) for k in range(self._n)])

    def __eq__(self, other):
        if not isinstance(other, RangeSet):
            return NotImplemented
        return list(self) == list(other)

    def __repr__(self):
        return f"RangeSet({list(self)!r})"

    def dumps(self):
        """Serialise: b'FTR1', u64 count, then (start, end) as u64, all little-endian."""
        cdef Py_ssize_t k
        parts = [_RS_MAGIC, _U64.pack(self._n)]
        for k in range(self._n):
            parts.append(_U64.pack(self._starts[k]))
            parts.append(_U64.pack(self._ends[k]))
        return b"".join(parts)

    @classmethod
    def loads(cls, data):
        """Inverse of ``dumps``; validates the form (sorted, disjoint, non-adjacent)."""
        cdef RangeSet rs = cls()
        cdef Py_ssize_t n, k
        cdef uint64_t s, e
        view = memoryview(data).cast("B")
        if len(view) < 12 or bytes(view[:4]) != _RS_MAGIC:
            raise ValueError("not a serialised RangeSet")
        n = _U64.unpack_from(view, 4)[0]
        if len(view) != 12 + 16 * n:
            raise ValueError("truncated or oversized RangeSet")
        rs._reserve(n)
        for k in range(n):
            s = _U64.unpack_from(view, 12 + 16 * k)[0]
            e = _U64.unpack_from(view, 20 + 16 * k)[0]
            if s >= e or (k and rs._ends[k - 1] >= s):
                raise ValueError("RangeSet intervals not sorted, disjoint and non-adjacent")
            rs._starts[k] = s
            rs._ends[k] = e
            rs._n = k + 1
            rs._covered += e - s
        return rs


# --------------------------------------------------------------------------------------------
# Sparse file
# --------------------------------------------------------------------------------------------

cdef class SparseFile:
    """A staging file written at offsets (sparse where nothing was written).

    Writes and reads release the GIL and loop until the whole buffer is transferred; an error
    raises OSError with its errno, never a silent short write.
    """

    def __cinit__(self):
        self._fd = -1

    def __init__(self, path, *, bint create=True):
        cdef bytes bpath = os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int flags = O_RDWR | O_CLOEXEC | (O_CREAT if create else 0)
        cdef int fd
        self.path = path
        with nogil:
            fd = c_open(cpath, flags, 0o644)
        if fd < 0:
            raise OSError(errno, os.strerror(errno), path)
        self._fd = fd

    def __dealloc__(self):
        if self._fd >= 0:
            c_close(self._fd)
            self._fd = -1

    cdef int _ensure_open(self) except -1:
        if self._fd < 0:
            raise ValueError("I/O operation on closed SparseFile")
        return 0

    cdef int _pwrite_all(self, const unsigned char *buf, Py_ssize_t n,
                         uint64_t offset) except -1:
        cdef Py_ssize_t done = 0, r = 0
        cdef int err = 0
        with nogil:
            while done < n:
                r = pwrite(self._fd, buf + done, n - done, <off_t>(offset + done))
                if r < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                if r == 0:
                    err = 5  # EIO: the kernel accepted nothing; never spin
                    break
                done += r
        if err:
            raise OSError(err, os.strerror(err), self.path)
        return 0

    cdef Py_ssize_t _pread_full(self, unsigned char *buf, Py_ssize_t n,
                                uint64_t offset) except -1:
        cdef Py_ssize_t done = 0, r = 0
        cdef int err = 0
        with nogil:
            while done < n:
                r = pread(self._fd, buf + done, n - done, <off_t>(offset + done))
                if r < 0:
                    if errno == EINTR:
                        continue
                    err = errno
                    break
                if r == 0:
                    break  # end of file
                done += r
        if err:
            raise OSError(err, os.strerror(err), self.path)
        return done

    def write(self, offset, const unsigned char[::1] data not None):
        """Write all of ``data`` at ``offset``."""
        cdef uint64_t off = _check_offset(offset, "offset")
        self._ensure_open()
        if data.shape[0]:
            _check_offset(offset + data.shape[0], "offset + length")
            self._pwrite_all(&data[0], data.shape[0], off)

    def read(self, offset, Py_ssize_t length):
        """Read ``length`` bytes at ``offset`` (fewer at end of file)."""
        cdef uint64_t off = _check_offset(offset, "offset")
        cdef bytes out
        cdef Py_ssize_t got
        self._ensure_open()
        if length < 0:
            raise ValueError("negative length")
        out = PyBytes_FromStringAndSize(NULL, length)
        got = self._pread_full(<unsigned char *>PyBytes_AS_STRING(out), length, off)
        return out if got == length else out[:got]

    def readinto(self, offset, unsigned char[::1] buf not None):
        """Fill ``buf`` from ``offset``; returns the number of bytes read (short at EOF)."""
        cdef uint64_t off = _check_offset(offset, "offset")
        self._ensure_open()
        if buf.shape[0] == 0:
            return 0
        return self._pread_full(&buf[0], buf.shape[0], off)

    def flush(self):
        """fdatasync: the written data is on stable storage when this returns."""
        cdef int r, err = 0
        self._ensure_open()
        with nogil:
            r = fdatasync(self._fd)
            if r < 0:
                err = errno
        if err:
            raise OSError(err, os.strerror(err), self.path)

    def truncate(self, size):
        cdef uint64_t n = _check_offset(size, "size")
        cdef int r, err = 0
        self._ensure_open()
        with nogil:
            r = ftruncate(self._fd, <off_t>n)
            if r < 0:
                err = errno
        if err:
            raise OSError(err, os.strerror(err), self.path)

    def size(self):
        """Current file size (st_size)."""
        cdef struct_stat st
        self._ensure_open()
        if fstat(self._fd, &st) < 0:
            raise OSError(errno, os.strerror(errno), self.path)
        return st.st_size

    def fileno(self):
        self._ensure_open()
        return self._fd

    @property
    def closed(self):
        return self._fd < 0

    def close(self):
        cdef int fd = self._fd
        self._fd = -1
        if fd >= 0 and c_close(fd) < 0:
            raise OSError(errno, os.strerror(errno), self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# Rolling SHA-256
# --------------------------------------------------------------------------------------------

cdef class RollingSha256:
    """SHA-256 whose state can be saved and restored (OpenSSL's SHA256_CTX is a plain struct).

    hashlib's objects cannot export their state; OpenSSL's low-level SHA256_* API uses the
    same SHA-NI/AVX code paths and its context is a documented struct, so we serialise it in a
    portable form: b'FTS1', the eight state words, the byte length (u64) and the pending
    partial block (64 bytes, zero-padded).
    """

    def __cinit__(self):
        SHA256_Init(&self._ctx)

    cdef int _update(self, const unsigned char *buf, Py_ssize_t n) except -1:
        if n <= 0:
            return 0
        if n >= NOGIL_HASH_MIN:
            with nogil:
                SHA256_Update(&self._ctx, buf, n)
        else:
            SHA256_Update(&self._ctx, buf, n)
        return 0

    cdef uint64_t _length(self) noexcept:
        return ((<uint64_t>self._ctx.Nh << 32) | self._ctx.Nl) >> 3

    def update(self, const unsigned char[::1] data not None):
        if data.shape[0]:
            self._update(&data[0], data.shape[0])

    @property
    def length(self):
        """Number of bytes absorbed so far."""
        return self._length()

    def digest(self):
        """The digest of what was absorbed so far; the state is not consumed."""
        cdef SHA256_CTX tmp = self._ctx
        cdef unsigned char md[32]
        SHA256_Final(md, &tmp)
        return PyBytes_FromStringAndSize(<char *>md, 32)

    def hexdigest(self):
        return self.digest().hex()

    def copy(self):
        cdef RollingSha256 other = RollingSha256.__new__(RollingSha256)
        other._ctx = self._ctx
        return other

    def dumps(self):
        cdef uint64_t length = self._length()
        cdef unsigned int num = length & 63
        block = PyBytes_FromStringAndSize(<char *>self._ctx.data, num) + bytes(64 - num)
        h = self._ctx.h
        return _SH_STATE.pack(_SH_MAGIC, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7],
                              length, block)

    @classmethod
    def loads(cls, data):
        cdef RollingSha256 self = cls()
        cdef uint64_t length
        cdef unsigned int num
        cdef int k
        if len(data) != _SH_STATE.size:
            raise ValueError("not a serialised RollingSha256 state")
        fields = _SH_STATE.unpack(data)
        if fields[0] != _SH_MAGIC:
            raise ValueError("not a serialised RollingSha256 state")
        length = fields[9]
        if length >> 61:
            raise ValueError("RollingSha256 length out of range")
        num = length & 63
        block = fields[10]
        if block[num:] != bytes(64 - num):
            raise ValueError("RollingSha256 state: garbage after the pending block")
        for k in range(8):
            self._ctx.h[k] = fields[1 + k]
        self._ctx.Nl = <unsigned int>((length << 3) & 0xFFFFFFFF)
        self._ctx.Nh = <unsigned int>(length >> 29)
        memset(self._ctx.data, 0, sizeof(self._ctx.data))
        memcpy(self._ctx.data, PyBytes_AS_STRING(block), num)
        self._ctx.num = num
        return self


# --------------------------------------------------------------------------------------------
# Transfer assembler
# --------------------------------------------------------------------------------------------

def _split_state(state):
    """(hashed, hash state, ranges) of a saved Assembler state: the header is magic (4
    bytes), bytes hashed (u64), hash state length (u32); the hash state and the serialised
    RangeSet follow."""
    view = memoryview(state).cast("B")
    if len(view) < _AS_HEAD.size:
        raise ValueError("not a serialised Assembler state")
    magic, hashed, hlen = _AS_HEAD.unpack_from(view, 0)
    if magic != _AS_MAGIC or len(view) < _AS_HEAD.size + hlen:
        raise ValueError("not a serialised Assembler state")
    return hashed, view[_AS_HEAD.size:_AS_HEAD.size + hlen], view[_AS_HEAD.size + hlen:]


cdef class Assembler:
    """One file being assembled: sparse data file + range set + rolling SHA-256 of the prefix.

    Invariant: the hash has absorbed exactly the bytes [0, hashed) of the file, and
    hashed <= ranges.prefix. While hashed == prefix (the normal case) each place() that
    extends the prefix feeds the hash from memory, reading back from the file only the bytes
    that were already there beyond the segment. A segment that rewrites already hashed bytes
    with different content resets the hash; digest() then re-reads what was never hashed.
    Not thread-safe.
    """

    def __init__(self, path, state=None, *, bint recycle=False):
        self._recycle = recycle
        self._wb_end = 0
        self._dropped = 0
        self.file = SparseFile(path)
        if state is None:
            self.ranges = RangeSet()
            self._hash = RollingSha256()
            self._hashed = 0
        else:
            self._load(state)

    def _load(self, state):
        hashed, hash_state, ranges = _split_state(state)
        self._hash = RollingSha256.loads(bytes(hash_state))
        self.ranges = RangeSet.loads(ranges)
        if self._hash._length() != hashed or hashed > self.ranges._prefix():
            raise ValueError("Assembler state inconsistent: hash beyond the contiguous prefix")
        self._hashed = hashed

    def dumps(self):
        """The whole state (ranges and hash), for the journal; the data stays in the file."""
        h = self._hash.dumps()
        return _AS_HEAD.pack(_AS_MAGIC, self._hashed, len(h)) + h + self.ranges.dumps()

    def hash_state(self):
        """The rolling hash's state (``RollingSha256.dumps``, its length is ``hashed``): what
        a journal record carries so that a restart resumes without reading the prefix."""
        return self._hash.dumps()

    def adopt_hash(self, state):
        """Take ``state`` (a ``RollingSha256.dumps``) as the hash of the file's bytes
        [0, its length): recovery vouches for it (a journal record written by this machine
        since it booted). ValueError when it is not a state or reaches beyond the contiguous
        prefix."""
        cdef RollingSha256 h = RollingSha256.loads(bytes(state))
        if h._length() > self.ranges._prefix():
            raise ValueError("hash state beyond the contiguous prefix")
        self._hash = h
        self._hashed = h._length()

    def catch_up(self):
        """Absorb [hashed, prefix) from the file (what no adopted state covered); returns
        the number of bytes read."""
        cdef uint64_t start = self._hashed, end = self.ranges._prefix()
        if end <= start:
            return 0
        self._absorb_from_file(start, end)
        return end - start

    @property
    def recycle(self):
        """Page-cache recycling: behind the hashed prefix, start the writeback of each
        finished ``RECYCLE_CHUNK`` and, one chunk later, wait for it and drop its pages
        (``POSIX_FADV_DONTNEED``). Those bytes are not read again (a local export is a
        rename; a streamed S3 export turns recycling off and drops each part's pages after
        uploading it), and writing into recycled pages costs
        the kernel far less than growing the page cache. Waiting a chunk behind means the
        writer rarely waits for the disk."""
        return self._recycle

    @recycle.setter
    def recycle(self, bint on):
        self._recycle = on

    @property
    def recycled(self):
        """[0, recycled) was written back and dropped from the page cache."""
        return self._dropped

    def recycle_behind(self):
        """Recycle whatever the hash passed since the last call (the native segment path
        moves the hash without calling back); a no-op when recycling is off."""
        self._recycle_behind()

    cdef int _recycle_behind(self) except -1:
        cdef uint64_t chunk = RECYCLE_CHUNK
        cdef uint64_t limit = (self._hashed // chunk) * chunk
        cdef uint64_t start, drop
        cdef int fd = self.file._fd
        if not self._recycle or fd < 0:
            return 0
        # failures are ignored: these are hints; fdatasync reports the write errors that count
        while self._wb_end < limit:
            start = self._wb_end
            with nogil:
                sync_file_range(fd, <off_t>start, <off_t>chunk, SYNC_FILE_RANGE_WRITE)
            self._wb_end = start + chunk
            if self._dropped < start:
                drop = self._dropped
                with nogil:
                    sync_file_range(fd, <off_t>drop, <off_t>(start - drop),
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE
                                    | SYNC_FILE_RANGE_WAIT_AFTER)
                    posix_fadvise(fd, <off_t>drop, <off_t>(start - drop), POSIX_FADV_DONTNEED)
                self._dropped = start
        return 0

    @staticmethod
    def saved_ranges(state):
        """The ranges a saved state (``dumps``) records, without opening its file: what a
        reader of the journal needs to know which bytes were received. ValueError when
        ``state`` is not one."""
        return RangeSet.loads(_split_state(state)[2])

    cdef int _reset_hash(self) except -1:
        self._hash = RollingSha256()
        self._hashed = 0
        return 0

    cdef bint _same_as_file(self, const unsigned char *buf, Py_ssize_t n,
                            uint64_t offset) except -1:
        cdef unsigned char *tmp = <unsigned char *>malloc(READBACK_CHUNK)
        cdef Py_ssize_t done = 0, want, got
        cdef bint same = True
        if tmp == NULL:
            raise MemoryError()
        try:
            while done < n and same:
                want = n - done if n - done < READBACK_CHUNK else READBACK_CHUNK
                got = self.file._pread_full(tmp, want, offset + done)
                same = got == want and memcmp(tmp, buf + done, want) == 0
                done += want
        finally:
            free(tmp)
        return same

    cdef int _absorb_from_file(self, uint64_t start, uint64_t end) except -1:
        cdef unsigned char *tmp
        cdef Py_ssize_t want, got
        if start != self._hashed:
            raise AssertionError("absorb must continue at the hashed end")
        if end <= start:
            return 0
        tmp = <unsigned char *>malloc(READBACK_CHUNK)
        if tmp == NULL:
            raise MemoryError()
        try:
            while start < end:
                want = <Py_ssize_t>_min64(end - start, READBACK_CHUNK)
                got = self.file._pread_full(tmp, want, start)
                if got != want:
                    raise OSError(5, f"staging file shorter than its recorded ranges "
                                     f"({start + got} < {end})", self.file.path)
                self._hash._update(tmp, want)
                start += want
                self._hashed = start
        finally:
            free(tmp)
        if self._recycle:
            self._recycle_behind()
        return 0

    def place(self, offset, const unsigned char[::1] data not None):
        """Write ``data`` at ``offset`` and record it. Returns the number of new bytes."""
        cdef Py_ssize_t n = data.shape[0]
        cdef uint64_t start = _check_offset(offset, "offset"), end, old_prefix, new_prefix
        cdef uint64_t skip
        if n == 0:
            return 0
        end = _check_offset(offset + n, "offset + length")
        if start < self._hashed:
            # rewrites bytes the hash already absorbed: fine when they are identical
            if not self._same_as_file(&data[0], <Py_ssize_t>(_min64(end, self._hashed) - start),
                                      start):
                self._reset_hash()
        self.file._pwrite_all(&data[0], n, start)
        old_prefix = self.ranges._prefix()
        added = self.ranges._add(start, end)
        new_prefix = self.ranges._prefix()
        if new_prefix > old_prefix and self._hashed == old_prefix:
            # the segment touches the prefix end (start <= old_prefix): hash from memory
            skip = self._hashed - start
            if end > self._hashed:
                self._hash._update(&data[skip], <Py_ssize_t>(end - self._hashed))
                self._hashed = end
            # it joined ranges that were already in the file: read those back
            if new_prefix > self._hashed:
                self._absorb_from_file(self._hashed, new_prefix)
            elif self._recycle:
                self._recycle_behind()
        return added

    def mark(self, offset, length, *, bint absorb=True):
        """Record [offset, offset + length) as present: the bytes are already in the file
        (recovery from the journal). With ``absorb`` (the default) the hash reads what this
        joins to the prefix; without, the caller adopts a recorded hash state instead
        (:meth:`adopt_hash`, then :meth:`catch_up`). Returns the number of new bytes."""
        cdef uint64_t start = _check_offset(offset, "offset")
        cdef uint64_t end = _check_offset(offset + length, "offset + length")
        cdef uint64_t old_prefix
        if length < 0:
            raise ValueError("negative length")
        old_prefix = self.ranges._prefix()
        added = self.ranges._add(start, end)
        if absorb and self._hashed == old_prefix:
            self._absorb_from_file(self._hashed, self.ranges._prefix())
        return added

    @property
    def hashed(self):
        """Bytes [0, hashed) have been absorbed by the rolling hash."""
        return self._hashed

    @property
    def prefix(self):
        return self.ranges._prefix()

    @property
    def covered(self):
        return self.ranges._covered

    def complete(self, size):
        return self.ranges.complete(size)

    def gaps(self, size, limit=None):
        return self.ranges.gaps(size, limit)

    def digest(self, size):
        """SHA-256 of the file's bytes [0, size); reads back only what was never hashed."""
        cdef uint64_t n = _check_offset(size, "size")
        if not self.ranges.complete(n):
            raise ValueError(f"[0, {n}) is not fully present")
        if self._hashed > n:
            # bytes beyond size were hashed; they are not part of the file: start over
            self._reset_hash()
        self._absorb_from_file(self._hashed, n)
        return self._hash.digest()

    def truncate(self, size):
        """Cut the file and the ranges at ``size``."""
        cdef uint64_t n = _check_offset(size, "size")
        self.file.truncate(n)
        self.ranges.clip(n)
        if self._hashed > n:
            self._reset_hash()

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
