"""The bytes the devices upload, without copies: every file is one random pool repeated.

Byte ``i`` of any file is ``pool[i % POOL]``, so a segment is a memoryview of the pool (no
copy per segment) as long as the segment size divides the pool, and every file of a given
size has the same SHA-256, computed once per size and cached (the load generator must not
spend a core hashing what it sends). The server cannot take advantage: it neither dedupes nor
compresses.
"""

from __future__ import annotations

import hashlib
import random

POOL = 16 << 20


class Content:
    def __init__(self, seed: int = 1) -> None:
        self.pool = random.Random(seed).randbytes(POOL)
        self.view = memoryview(self.pool)
        self._file_sha: dict[int, str] = {}
        self._seg_sha: dict[tuple[int, int], str] = {}

    def segment(self, offset: int, length: int) -> memoryview | bytes:
        """The ``length`` bytes of a file at ``offset``."""
        start = offset % POOL
        if start + length <= POOL:
            return self.view[start : start + length]
        out = bytearray()
        while len(out) < length:
            take = min(length - len(out), POOL - start)
            out += self.view[start : start + take]
            start = 0
        return bytes(out)

    def segment_sha256(self, offset: int, length: int) -> str:
        key = (offset % POOL, length)
        digest = self._seg_sha.get(key)
        if digest is None:
            digest = self._seg_sha[key] = hashlib.sha256(self.segment(offset, length)).hexdigest()
        return digest

    def file_sha256(self, size: int) -> str:
        digest = self._file_sha.get(size)
        if digest is None:
            h = hashlib.sha256()
            whole, rest = divmod(size, POOL)
            for _ in range(whole):
                h.update(self.view)
            h.update(self.view[:rest])
            digest = self._file_sha[size] = h.hexdigest()
        return digest
