# cython: language_level=3
"""Declarations of the native core (STYLE habit 3: declarations first).

Every cdef class field and every cdef helper is declared here; ``_core.pyx`` holds behaviour.
Error contracts are explicit: functions that can fail return -1 with a Python exception set
(``except -1``); pure arithmetic helpers are ``noexcept``.
"""

from libc.stdint cimport uint8_t, uint64_t


cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA256_CTX:
        unsigned int h[8]
        unsigned int Nl
        unsigned int Nh
        unsigned int data[16]
        unsigned int num
        unsigned int md_len
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t len)
    int SHA256_Final(unsigned char *md, SHA256_CTX *c)


cdef class RangeSet:
    cdef uint64_t *_starts
    cdef uint64_t *_ends
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef uint64_t _covered

    cdef int _reserve(self, Py_ssize_t need) except -1
    cdef Py_ssize_t _lower(self, uint64_t start) noexcept
    cdef Py_ssize_t _upper(self, uint64_t end) noexcept
    cdef object _add(self, uint64_t start, uint64_t end)
    cdef uint64_t _prefix(self) noexcept
    cdef int _check(self) except -1


cdef class SparseFile:
    cdef int _fd
    cdef readonly object path

    cdef int _ensure_open(self) except -1
    cdef int _pwrite_all(self, const unsigned char *buf, Py_ssize_t n, uint64_t offset) except -1
    cdef Py_ssize_t _pread_full(self, unsigned char *buf, Py_ssize_t n,
                                uint64_t offset) except -1


cdef class RollingSha256:
    cdef SHA256_CTX _ctx

    cdef int _update(self, const unsigned char *buf, Py_ssize_t n) except -1
    cdef uint64_t _length(self) noexcept


cdef class Assembler:
    cdef readonly SparseFile file
    cdef readonly RangeSet ranges
    cdef RollingSha256 _hash
    cdef uint64_t _hashed
    #: page-cache recycling behind the hashed prefix (see Assembler.recycle)
    cdef bint _recycle
    #: writeback was started for [0, _wb_end); [0, _dropped) was written back and dropped
    cdef uint64_t _wb_end
    cdef uint64_t _dropped

    cdef int _absorb_from_file(self, uint64_t start, uint64_t end) except -1
    cdef int _reset_hash(self) except -1
    cdef int _recycle_behind(self) except -1
    cdef bint _same_as_file(self, const unsigned char *buf, Py_ssize_t n,
                            uint64_t offset) except -1
