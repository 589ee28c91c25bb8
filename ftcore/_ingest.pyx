# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-segment hot path of a connection, native: recognise, place, acknowledge.

A :class:`SegmentPath` belongs to one MQTT connection. The server registers the transfers of
that connection's client which may take the fast path (:meth:`SegmentPath.open`); then, for
every read, :meth:`SegmentPath.feed` walks the complete packets at the head of the receive
buffer and takes each one that is a QoS 1 segment PUBLISH continuing such a transfer exactly at
the end of its contiguous prefix: it writes the payload at its offset, records the range, feeds
the rolling SHA-256 from memory and encodes the PUBACK. It stops at the first packet it does
not take, which the Python path (codec, session, dispatcher) then handles as before: anything
else, anything unusual (properties, retain, QoS 2, a checksum level, a gap, a rewrite, a file
too large, a byte budget used up, a write that fails), so every answer keeps coming from one
place in Python. The Python side runs once per read, not once per segment.

No asyncio, no sockets, no policy: which transfers are open here, the byte budget and what to
do with the placed ranges (journal them) are the caller's. The pure twin is
``ftcore._pure_ingest``; the tests run both against the same streams.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memcmp

from ftcore._core cimport Assembler

cdef enum:
    # the first byte of a PUBLISH, QoS 1, retain 0, without and with DUP
    _PUBLISH_QOS1 = 0x32
    _PUBLISH_QOS1_DUP = 0x3A

cdef uint64_t _MAX_OFFSET = 0x7FFFFFFFFFFFFFFF

cdef bytes _PREFIX = b"$file/"


cdef inline int _append_puback(bytearray out, unsigned int pid) except -1:
    """PUBACK, success: the same 4 bytes in MQTT 3.1.1 and 5 (no reason code, no properties)."""
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(out)
    cdef char *p
    if PyByteArray_Resize(out, n + 4) < 0:
        return -1
    p = PyByteArray_AS_STRING(out) + n
    p[0] = <char>0x40
    p[1] = 2
    p[2] = <char>(pid >> 8)
    p[3] = <char>(pid & 0xFF)
    return 0


cdef class _Slot:
    cdef bytes key
    cdef object file_id
    cdef Assembler asm
    #: where this read's run began (valid while ``touched``)
    cdef uint64_t run_start
    cdef bint touched


cdef class SegmentPath:
    """The fast path of one connection (see the module's docstring)."""

    cdef dict _slots
    cdef _Slot _last
    cdef list _touched
    cdef bytearray _acks
    cdef readonly int protocol_level
    cdef readonly uint64_t max_file_size
    cdef readonly Py_ssize_t max_packet_size
    #: segments and payload bytes taken so far
    cdef readonly uint64_t segments
    cdef readonly uint64_t payload_bytes

    def __init__(self, int protocol_level, max_file_size, Py_ssize_t max_packet_size):
        if protocol_level not in (4, 5):
            raise ValueError(f"unsupported protocol level {protocol_level}")
        self._slots = {}
        self._last = None
        self._touched = []
        self._acks = bytearray()
        self.protocol_level = protocol_level
        self.max_file_size = max_file_size
        self.max_packet_size = max_packet_size
        self.segments = 0
        self.payload_bytes = 0

    def open(self, str file_id, Assembler assembler not None):
        """Let segments of ``file_id`` take the fast path, placed into ``assembler``."""
        cdef _Slot slot = _Slot.__new__(_Slot)
        slot.key = file_id.encode("utf-8")
        slot.file_id = file_id
        slot.asm = assembler
        slot.touched = False
        old = self._slots.get(slot.key)
        if old is not None and (<_Slot>old).touched:
            raise RuntimeError("take_placed() before replacing a touched transfer")
        self._slots[slot.key] = slot
        self._last = None

    def close(self, str file_id):
        """Segments of ``file_id`` go the Python way again (export, abort, closing)."""
        old = self._slots.pop(file_id.encode("utf-8"), None)
        if old is not None and (<_Slot>old).touched:
            self._slots[(<_Slot>old).key] = old
            raise RuntimeError("take_placed() before closing a touched transfer")
        self._last = None

    def __len__(self):
        return len(self._slots)

    def __contains__(self, str file_id):
        return file_id.encode("utf-8") in self._slots

    cdef _Slot _lookup(self, const unsigned char *fid, Py_ssize_t n):
        cdef _Slot last = self._last
        if last is not None and len(last.key) == n and memcmp(<const char *>last.key, fid, n) == 0:
            return last
        found = self._slots.get(PyBytes_FromStringAndSize(<const char *>fid, n))
        if found is None:
            return None
        self._last = <_Slot>found
        return self._last

    def feed(self, const unsigned char[::1] buf, Py_ssize_t start, Py_ssize_t end,
             budget=None):
        """Take the packets in ``buf[start:end]`` that are fast-path segments, in order.

        Returns the position after the last packet taken (``start`` when none was). At most
        ``budget`` payload bytes are taken (None: no limit). The PUBACKs of what was taken are
        in :meth:`take_acks`, the ranges in :meth:`take_placed`.
        """
        cdef Py_ssize_t pos = start, p, rl, mult, hdr, tlen, i, fid_end, n, total
        cdef const unsigned char *b
        cdef const unsigned char *topic
        cdef unsigned int first, pid
        cdef uint64_t offset, new_prefix
        cdef uint64_t left = _MAX_OFFSET if budget is None else <uint64_t>max(budget, 0)
        cdef int digits
        cdef _Slot slot
        cdef Assembler asm
        if start < 0 or end > buf.shape[0] or start > end:
            raise ValueError("bad buffer bounds")
        if end == start:
            return start
        b = &buf[0]
        while pos < end:
            first = b[pos]
            if first != _PUBLISH_QOS1 and first != _PUBLISH_QOS1_DUP:
                break
            # remaining length: 1 to 4 bytes; anything odd is the decoder's to judge
            p = pos + 1
            rl = 0
            mult = 1
            while p < end and p - pos <= 4:
                rl += (b[p] & 0x7F) * mult
                mult <<= 7
                p += 1
                if not (b[p - 1] & 0x80):
                    break
            else:
                break  # incomplete header, or a fifth length byte
            hdr = p - pos
            if hdr > 2 and b[p - 1] == 0:
                break  # not the shortest encoding (MQTT-1.5.5-1): malformed, the decoder says so
            total = hdr + rl
            if total > end - pos or total > self.max_packet_size:
                break
            # topic: "$file/" fileId "/" digits
            if rl < 2:
                break
            tlen = (b[p] << 8) | b[p + 1]
            p += 2
            if tlen < 8 or p + tlen + 2 > pos + total:
                break
            topic = b + p
            if memcmp(topic, <const char *>_PREFIX, 6) != 0:
                break
            # the fileId is the second level: up to the first "/" after the prefix
            fid_end = 6
            while fid_end < tlen and topic[fid_end] != 0x2F:
                fid_end += 1
            if fid_end == 6 or tlen - fid_end - 1 < 1 or tlen - fid_end - 1 > 20:
                break
            offset = 0
            digits = 1
            i = fid_end + 1
            while i < tlen:
                if topic[i] < 0x30 or topic[i] > 0x39:
                    digits = 0
                    break
                if offset > (_MAX_OFFSET - (topic[i] - 0x30)) // 10:
                    digits = 0
                    break
                offset = offset * 10 + (topic[i] - 0x30)
                i += 1
            if not digits:
                break
            p += tlen
            pid = (b[p] << 8) | b[p + 1]
            p += 2
            if pid == 0:
                break
            if self.protocol_level == 5:
                if p >= pos + total or b[p] != 0:
                    break  # properties: the Python path reads them
                p += 1
            n = pos + total - p
            if n == 0 or <uint64_t>n > left:
                break
            slot = self._lookup(topic + 6, fid_end - 6)
            if slot is None:
                break
            asm = slot.asm
            if asm.file._fd < 0 or offset != asm._hashed or offset != asm.ranges._prefix():
                break
            if offset + <uint64_t>n > self.max_file_size:
                break
            try:
                asm.file._pwrite_all(b + p, n, offset)
            except OSError:
                break  # the Python path meets the same error and answers it
            if not slot.touched:
                slot.touched = True
                slot.run_start = offset
                self._touched.append(slot)
            asm.ranges._add(offset, offset + n)
            asm._hash._update(b + p, n)
            asm._hashed = offset + n
            new_prefix = asm.ranges._prefix()
            if new_prefix > asm._hashed:
                # it joined bytes placed earlier out of order: absorb them from the file
                asm._absorb_from_file(asm._hashed, new_prefix)
            _append_puback(self._acks, pid)
            self.segments += 1
            self.payload_bytes += n
            left -= n
            pos += total
        return pos

    def take_acks(self):
        """The PUBACKs of the segments taken since the last call, in order, as one buffer."""
        out = bytes(self._acks)
        del self._acks[:]
        return out

    def take_placed(self):
        """``[(file_id, start, end), ...]``: per transfer touched since the last call, the run
        of bytes it grew by (contiguous: the path only continues a prefix)."""
        cdef _Slot slot
        out = []
        for slot in self._touched:
            out.append((slot.file_id, slot.run_start, slot.asm._hashed))
            slot.touched = False
        self._touched = []
        return out
