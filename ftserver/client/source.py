"""The bytes to upload: a file by path, or a binary stream.

Segments are read at their offsets whenever they are (re)sent, so nothing but the segments in
flight is held in memory. A path is read with ``os.pread``; a seekable stream with seek + read;
a stream that cannot seek (a pipe) is first copied to an anonymous temporary file, since a
resend needs random access.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

#: read size of the checksum pass
_HASH_CHUNK = 1 << 20

SourceLike = str | os.PathLike[str] | BinaryIO


class Source:
    """Random access to the bytes of one upload."""

    def __init__(self, source: SourceLike) -> None:
        self.path: Path | None = None
        self._stream: BinaryIO | None = None
        self._fd = -1
        #: streams this object opened or created, closed by close()
        self._owned: list[BinaryIO] = []
        self.mtime_ns: int | None = None
        self.default_name: str | None = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(os.fspath(source)).resolve()
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            if stat.S_ISREG(st.st_mode):
                self.path = path
                self._fd = fd
                self.size = st.st_size
                self.mtime_ns = st.st_mtime_ns
                self.default_name = path.name
                return
            # a FIFO or a device: read it once, like a pipe
            opened = os.fdopen(fd, "rb")
            self._owned.append(opened)
            self._attach(opened, path.name)
        else:
            name = getattr(source, "name", None)
            self._attach(source, Path(name).name if isinstance(name, str) and name else None)

    def _attach(self, stream: BinaryIO, name: str | None) -> None:
        if not _seekable(stream):
            spool: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            self._owned.append(spool)
            shutil.copyfileobj(stream, spool, _HASH_CHUNK)
            stream = spool
        stream.seek(0, io.SEEK_END)
        self.size = stream.tell()
        self.default_name = name
        self._stream = stream

    @property
    def description(self) -> str:
        return str(self.path) if self.path is not None else "<stream>"

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only if the source shrank)."""
        if self._fd >= 0:
            return os.pread(self._fd, length, offset)
        assert self._stream is not None
        self._stream.seek(offset)
        return self._stream.read(length)

    def sha256(self) -> str:
        """Hex SHA-256 of the first ``size`` bytes (blocking: run it in a thread)."""
        h = hashlib.sha256()
        offset = 0
        while offset < self.size:
            chunk = self.read(offset, min(_HASH_CHUNK, self.size - offset))
            if not chunk:
                raise OSError(f"{self.description} shrank while it was read")
            h.update(chunk)
            offset += len(chunk)
        return h.hexdigest()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        for stream in self._owned:
            stream.close()
        self._owned.clear()


def _seekable(stream: BinaryIO) -> bool:
    try:
        if not stream.seekable():
            return False
        stream.seek(0, io.SEEK_CUR)
    except (OSError, ValueError, AttributeError):
        return False
    return True
